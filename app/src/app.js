// The page: loads the model once (LiteRT.js, CPU/wasm), answers the photos of one mushroom with
// predict.py's decision (decision.js) on predict.py's pixels (preprocess.js), offline after the
// first visit (sw.js). window.mushroomApp exposes the state for the browser tests and the benchmark.
import {loadLiteRt, loadAndCompile, supportsFeature, Tensor} from './litert.js';
import {answerFind, checkOutputs, dequantize, quantizeInput, readStats, validateBundle} from './decision.js';
import {resizeWithPad} from './preprocess.js';

const $ = (id) => document.getElementById(id);
const app = {bundle: null, model: null, stats: null, find: [], lastAnswer: null, lastInputs: [],
  timings: {load_ms: null, photos_ms: [], stages_ms: [], answers_ms: []}, engine: null, offlineReady: false, error: null, busy: false};
window.mushroomApp = app;

function status(text) { $('status').textContent = text; }

function showError(text) {
  $('error').textContent = text;
  $('error').hidden = !text;
}

// --- the model ---------------------------------------------------------------------------------------
async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r;
}

// --- the runtime ---------------------------------------------------------------------------------------
// LiteRT.js ships four wasm builds: relaxed SIMD (the default), compat (no relaxed SIMD: Safari),
// threaded (relaxed SIMD + threads, needs SharedArrayBuffer, so a cross-origin isolated page) and
// JSPI (for WebGPU, unused here). The page runs the threaded one with min(4, cores) threads when
// it is isolated (sw.js makes it so from the second load on), else the single-thread one its
// browser supports. ?threads=1 forces the single-thread build, ?threads=N sets the thread count
// (the benchmark and the tests use both).
const MAX_THREADS = 4;
const RELOAD_KEY = 'mushroom-isolation-reload';
const WASM_FILES = {
  threaded: ['litert_wasm_threaded_internal.js', 'litert_wasm_threaded_internal.wasm'],
  simd: ['litert_wasm_internal.js', 'litert_wasm_internal.wasm'],
  compat: ['litert_wasm_compat_internal.js', 'litert_wasm_compat_internal.wasm'],
};

function wantedThreads() {
  const asked = parseInt(new URLSearchParams(location.search).get('threads'), 10);
  const cores = navigator.hardwareConcurrency || 1;
  return Number.isFinite(asked) && asked >= 1 ? Math.min(asked, cores) : Math.min(MAX_THREADS, cores);
}

async function chooseEngine() {
  const relaxedSimd = await supportsFeature('relaxedSimd');
  const isolated = !!self.crossOriginIsolated;
  const threads = wantedThreads();
  // LiteRT.js' threaded build is also a relaxed-SIMD build: no threads without relaxed SIMD
  const threadable = relaxedSimd && threads > 1 && isolated && await supportsFeature('threads');
  return {build: threadable ? 'threaded' : relaxedSimd ? 'simd' : 'compat', threads: threadable ? threads : 1,
    wanted_threads: threads, isolated, relaxed_simd: relaxedSimd, cores: navigator.hardwareConcurrency || 1,
    fallback: null};
}

async function startRuntime(engine) {
  if (engine.build === 'threaded') {
    try {
      await loadLiteRt('./wasm/', {threads: true});
      return engine;
    } catch (err) {                  // the single-thread build still answers
      console.warn('threaded LiteRT.js failed, single thread instead:', err);
      Object.assign(engine, {build: engine.relaxed_simd ? 'simd' : 'compat', threads: 1,
        fallback: String(err && err.message || err)});
    }
  }
  await loadLiteRt('./wasm/');
  return engine;
}

function engineText(e) {
  const simd = e.relaxed_simd ? 'relaxed SIMD' : 'SIMD (no relaxed SIMD in this browser)';
  const threads = e.threads > 1 ? `${e.threads} threads` : '1 thread';
  const why = e.threads > 1 ? '' : e.cores <= 1 ? ' (one core)' : e.wanted_threads <= 1 ? ' (as asked: ?threads=1)'
    : !e.relaxed_simd ? ' (threads need relaxed SIMD)' : e.fallback ? ' (the threaded build failed)'
    : !e.isolated ? ' (the page is not cross-origin isolated)' : '';
  return `Engine: LiteRT.js on wasm, ${simd}, ${threads}${why}.`;
}

async function load() {
  const t0 = performance.now();
  // the same bundles predict.py's rules would refuse (no fitted check or temperature): no answers at all
  app.bundle = validateBundle(await (await fetchOk('model.json')).json());
  app.engine = await startRuntime(await chooseEngine());
  app.simd = app.engine.relaxed_simd;
  app.model = await loadAndCompile('model.tflite', {accelerator: 'wasm', cpuOptions: {numThreads: app.engine.threads}});
  const stats = app.bundle.open_set && app.bundle.open_set.stats;
  if (stats) app.stats = readStats(await (await fetchOk(stats.file)).arrayBuffer(), stats);
  app.outputNames = app.model.getOutputDetails().map((d) => d.name);
  app.timings.load_ms = performance.now() - t0;
  document.documentElement.dataset.engine = `${app.engine.build}:${app.engine.threads}`;
  $('engine').textContent = engineText(app.engine);
}

// One photo -> the model's outputs by role, dequantized as mushroom/litert.py does.
async function run(pixels) {
  const spec = app.bundle.model;
  const q = quantizeInput(pixels, spec.input.scale, spec.input.zero_point, spec.input.dtype);
  const input = new Tensor(q, spec.input.shape);
  let results;
  try {
    results = await app.model.run(input);
  } finally {
    input.delete();
  }
  const out = {};
  const byName = {};
  results.forEach((t, i) => { byName[app.outputNames[i]] = t; });
  for (const [role, o] of Object.entries(spec.outputs)) {
    const t = byName[o.name];
    if (!t) throw new Error(`the model gave no output named ${o.name}`);
    out[role] = dequantize(t.toTypedArray(), o.scale, o.zero_point);
  }
  for (const t of results) t.delete();
  return out;
}

// --- photos -------------------------------------------------------------------------------------------
// Decoded at natural size with EXIF orientation applied and no colour management (Pillow applies
// neither an ICC profile nor a display colour space), then resized in JS exactly as images.py does.
async function decode(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {imageOrientation: 'from-image', colorSpaceConversion: 'none',
      premultiplyAlpha: 'none'});
  } catch (err) {
    throw new Error(`“${file.name}” is not a photo this browser can read (${file.type || 'unknown type'}). Choose a JPEG, PNG or WebP photo.`);
  }
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  ctx.fillStyle = '#fff';            // images.to_rgb: transparency composited on white
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return {data: ctx.getImageData(0, 0, canvas.width, canvas.height).data, width: canvas.width, height: canvas.height};
}

async function analyse(file) {
  const t0 = performance.now();
  const img = await decode(file);
  const t1 = performance.now();
  const pixels = resizeWithPad(img.data, img.width, img.height, app.bundle.model.image_size);
  const t2 = performance.now();
  let outputs;
  try {
    outputs = checkOutputs(await run(pixels));
  } catch (err) {
    throw new Error(`“${file.name}”: ${err.message || err}.`);
  }
  const t3 = performance.now();
  app.timings.photos_ms.push(t3 - t0);
  app.timings.stages_ms.push({decode: t1 - t0, resize: t2 - t1, model: t3 - t2});
  return {name: file.name, url: URL.createObjectURL(file), pixels, outputs};
}

async function addPhotos(files, replace) {
  if (!app.model || app.busy) return;
  app.busy = true;
  showError('');
  const errors = [];
  const added = [];
  status(`Looking at ${files.length} photo${files.length > 1 ? 's' : ''}…`);
  for (const file of files) {
    try {
      added.push(await analyse(file));
    } catch (err) {
      errors.push(err.message || String(err));
    }
  }
  // finally: an error while answering or drawing must not leave the page ignoring every later photo
  try {
    if (replace && added.length) clearFind();
    app.find.push(...added);
    if (errors.length) showError(errors.join(' '));
    if (app.find.length) {
      const t0 = performance.now();
      app.lastInputs = app.find.map((p) => p.pixels);
      app.lastAnswer = answerFind(app.bundle, app.find.map((p) => p.outputs), app.stats, app.find.map((p) => p.name).join(', '));
      app.timings.answers_ms.push(performance.now() - t0);     // unknown-species score, fusion, verdict
      render(app.lastAnswer);
    }
    status(ready());
  } catch (err) {
    showError(`This photo could not be answered (${err.message || err}). Reload the page and try again.`);
  } finally {
    app.busy = false;
    app.answered = (app.answered || 0) + 1;
  }
}

function clearFind() {
  for (const p of app.find) URL.revokeObjectURL(p.url);
  app.find = [];
  app.lastAnswer = null;
  $('thumbs').replaceChildren();
  $('answer').hidden = true;
  $('reset').hidden = true;
}

// --- the answer ----------------------------------------------------------------------------------------
const pctText = (p) => `${(100 * p).toFixed(1)}%`;

function edibilityWords(grade, notes) {
  const meaning = app.bundle.grades.meaning[grade];
  if (grade === 'caution' && notes) return `caution: ${notes}`;
  return meaning ? `${grade}: ${meaning}` : grade;
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  e.append(...children);
  return e;
}

function render(a) {
  const classes = Object.fromEntries(app.bundle.classes.map((c) => [c.name, c]));
  $('thumbs').replaceChildren(...app.find.map((p) => el('img', {src: p.url, alt: p.name})));
  const v = $('verdict');
  v.className = `verdict ${a.verdict}`;
  v.replaceChildren(app.bundle.text.verdicts[a.verdict], el('small', {}, app.find.length > 1
    ? `One answer for ${app.find.length} photos of this mushroom.` : 'One photo. Add more photos of the same mushroom for a better answer.'));
  $('certainty').textContent = `Certainty: ${pctText(a.certainty.probability)} (${a.certainty.level}), calibrated: `
    + 'of the answers given with this certainty, about this share is right.';
  $('top5').replaceChildren(...a.top5.map((t) => {
    const c = classes[t.species];
    const danger = app.bundle.grades.dangerous.includes(t.edibility);
    return el('li', {},
      el('div', {}, el('span', {className: 'name'}, t.common_name || t.species), ' ',
        el('span', {className: 'sci'}, t.species), ` — ${pctText(t.probability)}`),
      el('div', {className: 'bar'}, el('span', {style: `width:${(100 * t.probability).toFixed(1)}%`})),
      el('div', {className: `edib${danger ? ' danger' : ''}`}, edibilityWords(t.edibility, c ? c.notes : '')));
  }));
  const reminder = app.bundle.text.reminder;
  $('reasons').replaceChildren(...a.reasons.filter((r) => r !== reminder).map((r) => el('li', {}, r)));
  $('lookalikes-box').hidden = !a.look_alikes.length;
  $('lookalikes').replaceChildren(...a.look_alikes.map((la) => el('li', {},
    `${la.name}${la.note ? ` (${la.note})` : ''}, look-alike of ${la.of_species}: ${la.edibility}`
    + (la.in_model ? '' : ' — this model was never trained on it'))));
  $('answer').hidden = false;
  $('reset').hidden = false;
}

function ready() {
  const b = app.bundle;
  const known = b.classes.length;
  const check = b.open_set ? 'photos unlike all of them are answered “unknown”'
    : 'it cannot tell when a photo shows another species';
  return `Ready: knows ${known} species (${check}). Model loaded in ${(app.timings.load_ms / 1000).toFixed(1)} s`
    + (app.offlineReady ? '; works offline.' : '.');
}

// --- offline ---------------------------------------------------------------------------------------------
// The first visit: the page is not isolated (nothing controls it yet). Where threads could run
// (relaxed SIMD, more than one core, not ?threads=1) it registers the worker first, waits until
// the worker has cached the page and controls it, and reloads once, so that the model is loaded
// once, by the threaded build, with the worker's isolation headers. Never twice in one tab
// (sessionStorage), so a browser that stays unisolated never loops; a worker that does not take
// control within ISOLATE_WAIT_MS, or any error, leaves the single-thread build running.
const ISOLATE_WAIT_MS = 30000;

async function isolateFirst() {
  if (self.crossOriginIsolated || !('serviceWorker' in navigator) || navigator.serviceWorker.controller
      || wantedThreads() <= 1 || !(await supportsFeature('relaxedSimd'))) return false;
  try {
    if (sessionStorage.getItem(RELOAD_KEY)) return false;
    const reg = await navigator.serviceWorker.register('sw.js');
    const worker = reg.installing || reg.waiting;
    // no new worker but an active one (a hard reload bypassed it): a plain reload puts it in control
    const controlled = !worker && reg.active ? true : await Promise.race([
      new Promise((resolve) => navigator.serviceWorker.addEventListener('controllerchange', () => resolve(true), {once: true})),
      // a worker whose install fails (a file it precaches is missing) will never take control
      new Promise((resolve) => worker && worker.addEventListener('statechange', () => {
        if (worker.state === 'redundant') resolve(false);
      })),
      new Promise((resolve) => setTimeout(() => resolve(false), ISOLATE_WAIT_MS))]);
    if (!controlled) return false;
    sessionStorage.setItem(RELOAD_KEY, String(Date.now()));
  } catch (err) {
    console.warn('cross-origin isolation:', err);
    return false;
  }
  location.reload();
  return true;
}

async function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  await navigator.serviceWorker.register('sw.js');
  const reg = await navigator.serviceWorker.ready;
  const urls = WASM_FILES[app.engine.build].map((f) => new URL(`wasm/${f}`, location.href).href);
  const reply = await new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (e) => resolve(e.data);
    reg.active.postMessage({type: 'cache', urls}, [channel.port2]);
  });
  app.offlineReady = !!reply.ok;
  if (!reply.ok) console.warn('offline cache incomplete:', reply.error);
  status(ready());
}

async function main() {
  if (await isolateFirst()) return;     // reloading
  try {
    await load();
  } catch (err) {
    app.error = String(err && err.message || err);
    status('');
    showError(`The model could not be loaded (${app.error}). Reload the page; if it keeps failing, this browser may be too old.`);
    return;
  }
  $('reminder').textContent = app.bundle.text.reminder;
  for (const id of ['camera', 'files']) {
    const input = $(id);
    input.disabled = false;
    input.addEventListener('change', async () => {
      const files = Array.from(input.files || []);
      input.value = '';                 // the same photo chosen again still fires change
      if (files.length) await addPhotos(files, id === 'files');
    });
  }
  $('reset').addEventListener('click', () => { clearFind(); showError(''); });
  app.ready = true;
  status(ready());
  registerServiceWorker().catch((err) => console.warn('service worker:', err));
}

main();
