// Service worker: after one visit every file of the page is in the Cache Storage and is served
// from there, so the page opens and answers with no network. build_app.py fills in the cache
// name (a hash of the built files: a rebuilt model gets a new cache, the old one is deleted) and
// the precache list (every file but the 9 MB .wasm builds: the page asks this worker to cache
// the one its browser runs, see app.js).
//
// It also makes the page cross-origin isolated on a host that sends no such headers (a static
// host, python -m http.server): every response it serves carries Cross-Origin-Opener-Policy:
// same-origin and Cross-Origin-Embedder-Policy: require-corp, so once it controls the page (from
// the second load on; app.js reloads once when it first takes control) `crossOriginIsolated` is
// true, SharedArrayBuffer exists and the page can run LiteRT.js' threaded build. The page loads
// nothing from another host, so require-corp blocks nothing.
const CACHE = 'mushroom-__CACHE_VERSION__';
const PRECACHE = __PRECACHE__;
const ISOLATION = {'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp'};

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(PRECACHE)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('mushroom-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

// The same response with the isolation headers (an opaque or error response, and one that may carry
// no body, as it is).
function isolated(response) {
  if (!response || response.status === 0 || response.type === 'opaque' || response.type === 'error'
      || [101, 204, 205, 304].includes(response.status)) return response;
  const headers = new Headers(response.headers);
  for (const [k, v] of Object.entries(ISOLATION)) headers.set(k, v);
  return new Response(response.body, {status: response.status, statusText: response.statusText, headers});
}

// Cache first, same origin only (the page requests nothing from another host); a miss goes to the
// network and is kept.
self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  event.respondWith(caches.open(CACHE).then(async (cache) => {
    const hit = await cache.match(event.request, {ignoreSearch: true});
    if (hit) return isolated(hit);
    const response = await fetch(event.request);
    if (response.ok) await cache.put(event.request, response.clone());
    return isolated(response);
  }));
});

// The page names the runtime files it loaded; cache them and say so.
self.addEventListener('message', (event) => {
  if (!event.data || event.data.type !== 'cache' || !event.ports[0]) return;
  const urls = event.data.urls.filter((u) => new URL(u, self.location.href).origin === self.location.origin);
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(urls))
    .then(() => event.ports[0].postMessage({ok: true, cache: CACHE}),
          (err) => event.ports[0].postMessage({ok: false, error: String(err)})));
});
