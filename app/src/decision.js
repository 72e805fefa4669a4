// The page's answer from the model's outputs: a mirror of predict.py's decision, kept small.
//   mushroom/litert.py      -> quantizeInput, dequantize (same rounding, same float32 outputs)
//   mushroom/openset.py     -> logProbs, unknownScore, fuse, relMahalanobis
//   mushroom/advice.py      -> advise (verdict rules, look-alikes, certainty)
//   mushroom/answer_text.py -> the sentences: model.json carries its templates (text.templates) and
//                              advise fills them as Python does; this file holds none of them
// Everything the rules need from the model folder and the config comes from model.json (built by
// mushroom/app.rules_bundle); look-alikes arrive already resolved by look_alikes.look_alike_table, so there
// is no species-table logic here. tests/test_app.py and tests/test_advice.py run this file under Node
// against advise() on thousands of cases (the parity guard); change both sides together.
// Pure functions, no DOM: the page (app.js) and Node import the same module.

const PRECISION = 1e-6;   // advice._SUM_TOLERANCE: renormalise only when off by more than this

// --- numbers as Python prints them ---------------------------------------------------------------------
// Python's format rounds half to even on exact binary ties; toFixed rounds them up. toFixed(100)
// is the exact decimal expansion of every double of the size printed here, so ties are detectable.
export function fixed(x, digits) {
  const s = x.toFixed(digits);
  const exact = Math.abs(x).toFixed(100);
  const dot = exact.indexOf('.');
  const rest = exact.slice(dot + 1 + digits);
  if (/^50*$/.test(rest)) {
    const kept = exact.slice(0, digits ? dot + 1 + digits : dot);
    if (Number(kept[kept.length - 1]) % 2 === 0) return (x < 0 ? '-' : '') + kept;
  }
  return s;
}

// Python's format(x, f'.{p}g'): p significant digits, trailing zeros dropped, exponent form
// ('2.84e+03') when the exponent is below -4 or at least p.
export function formatG(x, p = 6) {
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'nan' : (x > 0 ? 'inf' : '-inf');
  const [mant, e] = x.toExponential(p - 1).split('e');
  const exp = Number(e);
  const strip = (s) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (exp < -4 || exp >= p) {
    return `${strip(mant)}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return strip(fixed(x, p - 1 - exp));
}

const threshold = (t) => `${formatG(100 * t)}%`;          // advice._threshold

export function pct(p, near = null) {                      // advice._pct
  let text = '';
  for (let d = 1; d < 7; d++) {
    text = fixed(100 * p, d);
    if (near === null || p === near || text !== fixed(100 * near, d)) break;
  }
  return `${text}%`;
}

// --- tensors (mushroom/litert.py) -------------------------------------------------------------------------
const RANGES = {uint8: [0, 255], int8: [-128, 127], int16: [-32768, 32767]};

// Python's round(): half to even.
export function roundHalfEven(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// litert.quantize_input: round(x / scale + zero_point), clipped to the dtype's range.
export function quantizeInput(pixels, scale, zeroPoint, dtype) {
  const [lo, hi] = RANGES[dtype] || [-Infinity, Infinity];
  const out = dtype === 'int8' ? new Int8Array(pixels.length) : dtype === 'uint8' ? new Uint8Array(pixels.length)
    : new Float32Array(pixels.length);
  if (!(dtype in RANGES)) { out.set(pixels); return out; }
  if (pixels instanceof Uint8Array) {      // 8-bit pixels: the same formula on each of 256 values, looked up
    const table = quantizeInput(Uint16Array.from({length: 256}, (_, v) => v), scale, zeroPoint, dtype);
    for (let i = 0; i < pixels.length; i++) out[i] = table[pixels[i]];
    return out;
  }
  for (let i = 0; i < pixels.length; i++) {
    const q = roundHalfEven(scale ? pixels[i] / scale + zeroPoint : pixels[i]);
    out[i] = q < lo ? lo : q > hi ? hi : q;
  }
  return out;
}

// litert.dequantize_output: (q - zero_point) * scale in float64, stored as float32 (then read
// back as float64 by prediction.Forager.outputs).
export function dequantize(q, scale, zeroPoint) {
  const out = new Float64Array(q.length);
  for (let i = 0; i < q.length; i++) out[i] = Math.fround(scale ? (q[i] - zeroPoint) * scale : q[i]);
  return out;
}

// --- probabilities and unknown-species scores (mushroom/openset.py) -------------------------------------
const EPS = 1e-12;   // openset.EPS

// prediction.Forager.outputs: a photo whose outputs hold a NaN or an infinity gets an error, never a verdict.
export function checkOutputs(outputs) {
  for (const [role, values] of Object.entries(outputs)) {
    for (const v of values) {
      if (!Number.isFinite(v)) throw new Error(`the model gave non-finite ${role} (NaN or infinity) for this photo, so there is no answer`);
    }
  }
  return outputs;
}

// openset._logits: the logits, or log-probabilities (logits up to a constant) for files without them.
export function logitsOf(outputs) {
  if (outputs.logits) return outputs.logits;
  if (!outputs.probs) throw new Error('the model gave neither logits nor probabilities');
  return Array.from(outputs.probs, (v) => Math.log(Math.min(Math.max(v, EPS), 1.0)));
}

function logSumExp(z) {
  let m = -Infinity;
  for (const v of z) if (v > m) m = v;
  let s = 0;
  for (const v of z) s += Math.exp(v - m);
  return m + Math.log(s);
}

export function logProbs(logits, temperature) {
  const t = temperature || 1.0;
  const z = Array.from(logits, (v) => v / t);
  const lse = logSumExp(z);
  return z.map((v) => v - lse);
}

export function probabilities(logits, temperature) {
  return logProbs(logits, temperature).map(Math.exp);
}

// stats: {dim, mw (Float64Array C*D), mwNorm (Float64Array C), whiten (Float32Array), layout}
export function mahalanobis(embedding, stats) {
  const D = stats.dim;
  const xw = new Float64Array(D);
  const w = stats.whiten;
  if (stats.layout === 'lower') {          // row i holds W[i][0..i]
    let k = 0;
    for (let i = 0; i < D; i++) {
      const xi = embedding[i];
      for (let j = 0; j <= i; j++) xw[j] += xi * w[k++];
    }
  } else {
    for (let i = 0; i < D; i++) {
      const xi = embedding[i];
      for (let j = 0; j < D; j++) xw[j] += xi * w[i * D + j];
    }
  }
  let sq = 0;
  for (let j = 0; j < D; j++) sq += xw[j] * xw[j];
  let best = Infinity;
  for (let c = 0; c < stats.classes; c++) {
    let dot = 0;
    for (let j = 0; j < D; j++) dot += xw[j] * stats.mw[c * D + j];
    const d = Math.max(sq - 2 * dot + stats.mwNorm[c], 0);
    if (d < best) best = d;
  }
  return best;
}

// openset.relative_mahalanobis on the float32 arrays of openset.bin (app._rmd_binary), in float64:
// project the L2-normalised embedding, then min over classes of |zW|^2 - 2 zW.mW + |mW|^2 (classes
// without training photos skipped), minus the squared norm of (z - background mean) W_bg.
export function relMahalanobis(embedding, st) {
  const {dim: D, k} = st;
  let n2 = 0;
  for (let i = 0; i < D; i++) n2 += embedding[i] * embedding[i];
  const norm = Math.max(Math.sqrt(n2), EPS);
  const z = new Float64Array(k);
  for (let i = 0; i < D; i++) {
    const xi = embedding[i] / norm - st.centre[i];
    const row = i * k;
    for (let j = 0; j < k; j++) z[j] += xi * st.components[row + j];
  }
  const times = (v, W) => {            // v (k) times W (k x k, row-major)
    const out = new Float64Array(k);
    for (let i = 0; i < k; i++) {
      const vi = v[i];
      for (let j = 0; j < k; j++) out[j] += vi * W[i * k + j];
    }
    return out;
  };
  const zw = times(z, st.whiten);
  let zz = 0;
  for (let j = 0; j < k; j++) zz += zw[j] * zw[j];
  let best = Infinity;
  for (let c = 0; c < st.classes; c++) {
    const mean = st.means.subarray(c * k, (c + 1) * k);
    if (!mean.every(Number.isFinite)) continue;
    const mw = times(mean, st.whiten);
    let dot = 0, mm = 0;
    for (let j = 0; j < k; j++) { dot += zw[j] * mw[j]; mm += mw[j] * mw[j]; }
    const d = Math.max(zz - 2 * dot + mm, 0);
    if (d < best) best = d;
  }
  const zc = z.map((v, j) => v - st.mean_bg[j]);
  const zb = times(zc, st.whiten_bg);
  let bg = 0;
  for (let j = 0; j < k; j++) bg += zb[j] * zb[j];
  return best - bg;
}

// openset.bin as model.json's open_set.stats lays it out (app.openset_binary), for the score's kind.
export function readStats(buffer, layout) {
  if (layout.kind === 'rel_mahalanobis') {
    const st = {kind: layout.kind, dim: layout.dim, k: layout.k, classes: layout.classes};
    for (const [name, {offset, shape}] of Object.entries(layout.arrays)) {
      st[name] = new Float32Array(buffer, offset, shape.reduce((a, b) => a * b, 1));
    }
    return st;
  }
  const {dim, classes, offsets} = layout;
  return {kind: 'mahalanobis', dim, classes, layout: layout.whiten_layout,
    mw: new Float64Array(buffer, offsets.mw, classes * dim),
    mwNorm: new Float64Array(buffer, offsets.mw_norm, classes),
    whiten: new Float32Array(buffer, offsets.whiten, (layout.bytes - offsets.whiten) / 4)};
}

export function unknownScore(name, outputs, temperature, stats) {
  const t = temperature || 1.0;
  if ((name === 'energy' || name === 'max_logit') && !outputs.logits) {
    throw new Error(`the ${name} score needs the model's logits output`);   // openset.available_scores
  }
  const z = logitsOf(outputs);
  if (name === 'msp') return 1.0 - Math.exp(Math.max(...logProbs(z, t)));
  if (name === 'energy') return -t * logSumExp(Array.from(z, (v) => v / t));
  if (name === 'max_logit') return -Math.max(...z);
  if (name === 'mahalanobis') {
    if (!stats || !outputs.embedding) throw new Error('the Mahalanobis score needs the embedding and openset.bin');
    return mahalanobis(outputs.embedding, stats);
  }
  if (name === 'rel_mahalanobis') {
    if (!stats || stats.kind !== 'rel_mahalanobis' || !outputs.embedding) {
      throw new Error('the relative Mahalanobis score needs the embedding and openset.bin');
    }
    return relMahalanobis(outputs.embedding, stats);
  }
  throw new Error(`unknown score ${name}`);
}

// openset.fuse: the mean of the photos' logits (times n for "sum").
export function fuse(outputsList, how) {
  const n = outputsList.length;
  const all = outputsList.map(logitsOf);
  const C = all[0].length;
  const z = new Float64Array(C);
  for (const l of all) for (let i = 0; i < C; i++) z[i] += l[i];
  for (let i = 0; i < C; i++) z[i] = (z[i] / n) * (how === 'sum' ? n : 1);
  return z;
}

// app.bundle_problems: why the page must refuse this model.json (empty: it may answer). The
// same bundles are refused here and in Python (tests/test_app.py runs both on the same cases).
const finite = (x) => typeof x === 'number' && Number.isFinite(x);
export function bundleProblems(b) {
  const problems = [];
  const t = b.temperature;
  if (!(finite(t) && t > 0)) problems.push('no fitted temperature');
  const os = b.open_set;
  if (os === null || typeof os !== 'object' || Array.isArray(os)) {
    problems.push('no fitted unknown-species check');
  } else {
    for (const key of ['threshold', 'edible_threshold']) {
      if (!finite(os[key])) problems.push(`the unknown-species ${key.replace('_', ' ')} is not a finite number`);
    }
    if (finite(os.threshold) && finite(os.edible_threshold) && os.edible_threshold > os.threshold) {
      problems.push('the edible threshold is looser than the unknown-species threshold');
    }
    if (!['msp', 'energy', 'max_logit', 'mahalanobis', 'rel_mahalanobis'].includes(os.score)) {
      problems.push(`unknown unknown-species score ${os.score === undefined ? 'None' : `'${os.score}'`}`);
    } else if (['mahalanobis', 'rel_mahalanobis'].includes(os.score) && (os.stats === null || typeof os.stats !== 'object' || Array.isArray(os.stats))) {
      problems.push(`no statistics for the ${os.score} score`);
    }
  }
  const cfg = b.predict || {};
  for (const key of ['edible_threshold', 'danger_threshold', 'not_edible_threshold']) {
    if (!(finite(cfg[key]) && cfg[key] >= 0 && cfg[key] <= 1)) problems.push(`predict.${key} is not a probability`);
  }
  if (!(Number.isInteger(cfg.top_k) && cfg.top_k >= 1)) problems.push('predict.top_k is not a positive integer');
  if (!b.classes || !b.classes.length) problems.push('no classes');
  return problems;
}

export function validateBundle(b) {
  const problems = bundleProblems(b);
  if (problems.length) throw new Error(`this page's model.json has ${problems.join('; ')}: rebuild it with build_app.py after evaluate.py`);
  return b;
}

// The answer for one find (one or several photos of one mushroom), as Forager._answer gives it.
export function answerFind(bundle, outputsList, stats, image = null) {
  validateBundle(bundle);
  outputsList.forEach(checkOutputs);
  const logits = outputsList.length > 1 ? fuse(outputsList, bundle.fusion) : logitsOf(outputsList[0]);
  const probs = probabilities(logits, bundle.temperature);
  let unknown = null;
  const os = bundle.open_set;
  if (os) {
    let s = 0, worst = -Infinity;
    for (const o of outputsList) {
      const v = unknownScore(os.score, o, bundle.temperature, stats);
      s += v;
      worst = Math.max(worst, v);
    }
    // advice.UnknownCheck.worst_photo_score: the mean flags, every photo must pass the edible limit
    unknown = {score: s / outputsList.length, threshold: os.threshold, name: os.score, recall: os.unknown_recall,
      edible_threshold: os.edible_threshold ?? null, edible_recall: os.edible_recall ?? null,
      worst_photo_score: outputsList.length > 1 ? worst : null};
  }
  return advise(probs, bundle, unknown, image);
}

// --- the verdict (mushroom/advice.py) ----------------------------------------------------------------------
export function advise(probsIn, bundle, unknown = null, image = null) {
  const classes = bundle.classes;
  const cfg = bundle.predict;
  const edible = new Set(bundle.grades.edible);
  const dangerous = new Set(bundle.grades.dangerous);
  const meaning = bundle.grades.meaning;
  const UNKNOWN_EDIBILITY = bundle.text.unknown_edibility;
  // advice._check_probs and UnknownCheck.__post_init__: never a verdict from a NaN
  if (probsIn.length !== classes.length) throw new Error(`expected ${classes.length} class probabilities (one per species), got shape (${probsIn.length},)`);
  let p = Array.from(probsIn);
  if (!p.every((v) => Number.isFinite(v) && v >= 0) || !(p.reduce((a, b) => a + b, 0) > 0)) {
    throw new Error('probabilities must be finite, non-negative and not all zero');
  }
  if (unknown !== null) {
    for (const key of ['score', 'threshold', 'edible_threshold', 'worst_photo_score']) {
      const v = unknown[key];
      if ((v === null || v === undefined) && (key === 'edible_threshold' || key === 'worst_photo_score')) continue;
      if (!finite(v)) throw new Error(`the unknown-species ${key.replace(/_/g, ' ')} is ${v}, not a finite number: the model's outputs for this photo (or its fitted check) are broken`);
    }
  }
  const temperature = bundle.temperature ?? null;
  if (temperature !== null && !(finite(temperature) && temperature > 0)) {
    throw new Error(`the temperature is ${temperature}, not a positive finite number: rerun evaluate.py`);
  }
  const total = p.reduce((a, b) => a + b, 0);
  if (Math.abs(total - 1.0) > PRECISION) p = p.map((v) => v / total);
  const topK = cfg.top_k;
  const edibleT = cfg.edible_threshold, dangerT = cfg.danger_threshold, notEdibleT = cfg.not_edible_threshold;
  const isEdible = (s) => edible.has(s.edibility);
  const isDangerous = (s) => dangerous.has(s.edibility);
  // answer_text.say: every sentence comes from model.json's templates, filled with text formatted here
  const templates = bundle.text.templates;
  const say = (key, fields = {}) => templates[key].replace(/\{(\w+)\}/g, (_, k) => fields[k]);
  const label = (s) => (s.common_name ? say('label', {name: s.name, common_name: s.common_name}) : s.name);
  const noted = (text, note) => (note ? say('with_note', {text, note}) : text);
  const gradeSentence = (s) => (s.edibility === 'caution'
    ? say('grade_caution', {name: s.name, notes: s.notes || meaning.caution})
    : say('grade', {name: s.name, grade: s.edibility, meaning: meaning[s.edibility]}));
  const noteSentence = (s) => (s.notes && s.edibility !== 'caution' ? [say('table_note', {name: s.name, notes: s.notes})] : []);
  const risky = (la) => dangerous.has(la.edibility) || la.edibility === UNKNOWN_EDIBILITY;
  const unseenDanger = (la) => risky(la) && !la.in_model;
  const probOf = (name) => p[classes.findIndex((c) => c.name === name)];

  // np.argsort(-p, kind="stable"): ties keep class order
  const order = p.map((_, i) => i).sort((i, j) => (p[j] - p[i]) || (i - j));
  const top = order.slice(0, topK).map((i) => ({species: classes[i].name, common_name: classes[i].common_name,
    probability: p[i], edibility: classes[i].edibility, notes: classes[i].notes}));
  const best = classes[order[0]], p1 = p[order[0]];

  const lookAlikes = [];
  order.slice(0, topK).forEach((i, rank) => {
    if (rank > 0 && p[i] <= dangerT) return;
    for (const la of classes[i].look_alikes) lookAlikes.push(la);
  });
  const bestRisky = lookAlikes.filter((la) => la.of_species === best.name && risky(la));
  const blockers = order.slice(1).filter((i) => isDangerous(classes[i]) && p[i] > dangerT).map((i) => [classes[i], p[i]]);
  const unseen = lookAlikes.filter((la) => la.of_species === best.name && unseenDanger(la));
  // advice.always_blocks, precomputed per look-alike in model.json (blocks): over the top-1 and every
  // class above danger_threshold; those already named by unknown_look_alike are not named twice.
  const key = (la) => `${la.name}\u0000${la.of_species}\u0000${la.note}\u0000${la.edibility}\u0000${la.in_model}`;
  const unseenKeys = new Set(unseen.map(key));
  const deadly = [];
  order.forEach((i, rank) => {
    if (rank > 0 && !(p[i] > dangerT)) return;
    for (const la of classes[i].look_alikes) if (la.blocks && !unseenKeys.has(key(la))) deadly.push(la);
  });

  const lookAlikeSentence = (la, of) => {
    const name = noted(la.name, la.note);
    if (!la.in_table) return say('look_alike_untabled', {of: of.name, name});
    const desc = say('look_alike_desc', {name, common_name: la.common_name, grade: la.edibility});
    if (!la.in_model) return say('look_alike_unseen', {of: of.name, desc});
    return say('look_alike_weighed', {of: of.name, desc, p: pct(probOf(la.name))});
  };
  const what = (la) => noted(la.in_table ? say('graded_as', {grade: la.edibility}) : say('not_in_table'), la.note);

  const reasons = [], rules = [];
  let verdict;
  const flagged = unknown !== null && unknown.score >= unknown.threshold;
  // advice.UnknownCheck.too_close_for_edible
  const edibleScore = unknown === null ? null
    : unknown.worst_photo_score == null ? unknown.score : Math.max(unknown.score, unknown.worst_photo_score);
  const margin = unknown !== null && (unknown.edible_threshold == null || edibleScore >= unknown.edible_threshold);
  const unfitted = unknown === null || temperature === null;
  if (flagged) {
    verdict = 'unknown';
    rules.push('unknown_species');
    const share = unknown.recall ? say('flagged_share', {recall: threshold(unknown.recall)}) : '';
    reasons.push(say('flagged', {n: String(classes.length), score: formatG(unknown.score, 3),
      threshold: formatG(unknown.threshold, 3), share}));
    reasons.push(say('dont_eat_unknown'));
  } else if (isEdible(best) && p1 >= edibleT && !(blockers.length || unseen.length || deadly.length || margin || unfitted)) {
    verdict = 'edible';
    rules.push('confident_edible');
    reasons.push(say('edible', {label: label(best), p: pct(p1, edibleT), t: threshold(edibleT)}));
    reasons.push(gradeSentence(best));
    reasons.push(...noteSentence(best));
    reasons.push(say('no_danger', {t: threshold(dangerT)}));
    reasons.push(...bestRisky.map((la) => lookAlikeSentence(la, best)));
  } else if (!isEdible(best) && p1 >= notEdibleT) {
    verdict = 'not_edible';
    rules.push('confident_not_edible');
    reasons.push(say('not_edible', {label: label(best), p: pct(p1, notEdibleT), t: threshold(notEdibleT)}));
    reasons.push(gradeSentence(best));
    reasons.push(...noteSentence(best));
    reasons.push(say('dont_eat_known', {grade: best.edibility}));
  } else {
    verdict = 'uncertain';
    const head = say('head', {label: label(best), grade: best.edibility});
    if (isEdible(best) && p1 < edibleT) {
      rules.push('low_certainty');
      reasons.push(say('low_edible', {head, p: pct(p1, edibleT), t: threshold(edibleT)}));
    } else if (isEdible(best)) {
      const why = blockers.length ? 'blocked_danger' : unseen.length ? 'blocked_unseen' : deadly.length ? 'blocked_deadly'
        : unfitted ? 'blocked_unfitted' : 'blocked_margin';
      reasons.push(say(why, {head, p: pct(p1, edibleT)}));
    } else {
      rules.push('low_certainty');
      reasons.push(say('low_not_edible', {head, p: pct(p1, notEdibleT), t: threshold(notEdibleT)}));
    }
    if (blockers.length) rules.push('dangerous_probability');
    for (const [s, q] of blockers) {
      reasons.push(say('danger_holds', {label: label(s), grade: s.edibility, q: pct(q, dangerT), t: threshold(dangerT)}));
    }
    if (isEdible(best) && unseen.length) {
      rules.push('unknown_look_alike');
      for (const la of unseen) reasons.push(say('unseen_rule', {best: best.name, name: la.name, what: what(la)}));
    }
    if (isEdible(best) && deadly.length) {
      rules.push('deadly_look_alike');
      for (const la of deadly) reasons.push(say('deadly_rule', {of: la.of_species, name: la.name, what: what(la)}));
    }
    if (isEdible(best) && p1 >= edibleT && margin) {
      rules.push('unknown_margin');
      if (unknown.edible_threshold == null) {
        reasons.push(say('margin_no_limit'));
      } else {
        const share = unknown.edible_recall ? say('margin_share', {recall: threshold(unknown.edible_recall)}) : '';
        reasons.push(say('margin', {what: say(edibleScore === unknown.score ? 'margin_photo' : 'margin_find'),
          score: formatG(edibleScore, 3), limit: formatG(unknown.edible_threshold, 3), share}));
      }
    }
    reasons.push(say('dont_eat_uncertain'));
  }
  if (unknown !== null && unknown.worst_photo_score == null && (verdict === 'unknown' || rules.includes('unknown_margin'))) {
    // advice._more_photos_sentence: one photo, flagged or just short of the edible limit
    const views = [...new Set(order.slice(0, 2).map((i) => classes[i].views))];
    reasons.push(say('more_photos', {views: views.join(say('views_separator'))}));
  }
  if (unknown === null) {
    rules.push('no_unknown_check');
    reasons.push(say('no_unknown_check'));
  }
  if (temperature === null) {
    rules.push('not_calibrated');
    reasons.push(say('not_calibrated'));
  }
  reasons.push(bundle.text.reminder);
  const level = p1 >= edibleT ? 'high' : p1 >= notEdibleT ? 'medium' : 'low';
  return {
    image,
    top5: top.map(({species, common_name, probability, edibility}) => ({species, common_name, probability, edibility})),
    certainty: {probability: p1, level},
    verdict,
    reasons,
    rules,
    look_alikes: lookAlikes.map(({name, of_species, edibility, in_model, note}) => ({name, of_species, edibility, in_model, note})),
    unknown_score: unknown === null ? null : unknown.score,
    unknown_threshold: unknown === null ? null : unknown.threshold,
    unknown_edible_threshold: unknown === null || unknown.edible_threshold == null ? null : unknown.edible_threshold,
    unknown_flagged: flagged,
    known_species: classes.length,
  };
}

