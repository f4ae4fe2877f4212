// liif view: the page. One canvas; `s` is device pixels per image pixel (100 % = one image
// pixel per device pixel). Up to 100 % the canvas draws the image's own pixels; beyond, the
// browser's smooth resize of them is the placeholder and the model's tiles (TILE output pixels
// a side, at scale S = s rounded to 1/100, from /api/tile) replace it as they arrive. Each
// settled view is a new generation: requests of older ones are aborted here and dropped by the
// server. State for tests and the curious: window.__liifView.
"use strict";
(() => {
  let TILE = 256; // output pixels per tile side: the server's choice (info.tile)
  const MAX_INFLIGHT = 3; // tile requests open at once (the server renders one at a time)
  const CACHE_MAX = 400; // tiles kept (256² RGBA: 256 KiB each)
  const SETTLE_MS = 120; // quiet time after a gesture before tiles are requested
  const MIN_ZOOM_OF_FIT = 0.5;
  const BG = "#1b1b1d";
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token") || "";
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const viewId = Math.random().toString(36).slice(2, 12);

  const st = (window.__liifView = {
    ready: false, fitted: true, image: 0, s: 1, S: null, outW: 0, outH: 0, gen: 0, split: 0.5,
    layers: { a: { model: "off", denoise: null }, b: { model: "", denoise: null } },
    // per layer, over the visible tiles at the settled scale: how many, how many drawn from
    // the server's tiles (the model's, or bicubic's), how many still the placeholder
    drawn: { a: { wanted: 0, done: 0, placeholder: 0 }, b: { wanted: 0, done: 0, placeholder: 0 } },
    requests: 0, loaded: 0, stale: 0, failed: 0, inflight: 0, queued: 0, frames: 0,
    hold: false, // tests: keep requests queued (to see placeholders) until set false
    errors: [],
  });

  let info = null;
  let img = null; // the current image (its own pixels)
  let W = 0, H = 0; // its size
  let tx = 0, ty = 0; // device-pixel position of its top-left corner
  let cw = 0, ch = 0, dpr = 1;
  const cache = new Map(); // key -> ImageBitmap, in least-recently-used order
  let queue = []; // tile requests not yet sent, nearest the centre first
  const inflight = new Map(); // key -> AbortController
  let settleTimer = 0, drawPending = false, genDone = 0, genTotal = 0;

  const url = (path, params = {}) => {
    const q = new URLSearchParams({ token, ...params });
    return `${path}?${q}`;
  };
  const roundS = (s) => Math.round(s * 100) / 100;
  const outSize = (S) => [Math.floor(H * S + 0.5), Math.floor(W * S + 0.5)]; // as sizing.py
  const layerKey = (L) => `${st.image}|${L.model}|${L.denoise ?? ""}`;
  const compareOn = () => st.layers.a.model !== "off";

  function showError(text) {
    st.errors.push(text);
    const e = $("error");
    e.textContent = text;
    e.hidden = false;
    clearTimeout(showError.t);
    showError.t = setTimeout(() => (e.hidden = true), 5000);
  }

  // ---------------------------------------------------------------------------------------
  // geometry

  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = canvas.getBoundingClientRect();
    const ncw = Math.max(1, Math.round(r.width * dpr)), nch = Math.max(1, Math.round(r.height * dpr));
    if (cw && ch) { tx += (ncw - cw) / 2; ty += (nch - ch) / 2; }
    cw = canvas.width = ncw;
    ch = canvas.height = nch;
    if (st.fitted && img) { fit(); return; } // still "fit": fit the new size
    requestDraw();
    scheduleSettle();
  }

  function fitScale() { return Math.min(cw / W, ch / H); }
  function minScale() { return Math.min(fitScale(), 1) * MIN_ZOOM_OF_FIT; }
  function maxScale() { return info ? info.max_scale : 64; }

  function setScale(s1, px = cw / 2, py = ch / 2) {
    st.fitted = false;
    s1 = Math.min(maxScale(), Math.max(minScale(), s1));
    tx = px - ((px - tx) * s1) / st.s;
    ty = py - ((py - ty) * s1) / st.s;
    st.s = s1;
    clampPan();
    requestDraw();
    scheduleSettle();
  }

  function fit() {
    st.fitted = true;
    st.s = fitScale();
    tx = (cw - W * st.s) / 2;
    ty = (ch - H * st.s) / 2;
    requestDraw();
    scheduleSettle();
  }

  function panBy(dx, dy) {
    st.fitted = false;
    tx += dx; ty += dy;
    clampPan();
    requestDraw();
    scheduleSettle();
  }

  // keep some of the image on screen
  function clampPan() {
    const iw = W * st.s, ih = H * st.s, m = 0.25;
    tx = Math.min(cw * (1 - m), Math.max(cw * m - iw, tx));
    ty = Math.min(ch * (1 - m), Math.max(ch * m - ih, ty));
  }

  // the tiles of output grid S under the device-pixel columns [x0, x1)
  function grid(S, x0, x1) {
    const [oh, ow] = outSize(S);
    const fx = (st.s * W) / ow, fy = (st.s * H) / oh; // device px per output px
    const cols = Math.ceil(ow / TILE), rows = Math.ceil(oh / TILE);
    const i0 = Math.max(0, Math.floor((x0 - tx) / fx / TILE));
    const i1 = Math.min(cols - 1, Math.floor((x1 - 1 - tx) / fx / TILE));
    const j0 = Math.max(0, Math.floor(-ty / fy / TILE));
    const j1 = Math.min(rows - 1, Math.floor((ch - 1 - ty) / fy / TILE));
    const tiles = [];
    for (let j = j0; j <= j1; j++) {
      for (let i = i0; i <= i1; i++) {
        const x = i * TILE, y = j * TILE;
        tiles.push({ x, y, w: Math.min(TILE, ow - x), h: Math.min(TILE, oh - y), fx, fy });
      }
    }
    return tiles;
  }

  // device-pixel columns of each shown layer: [a | b] when comparing, else b alone
  function regions() {
    if (!compareOn()) return [["b", 0, cw]];
    const sx = Math.round(st.split * cw);
    return [["a", 0, sx], ["b", sx, cw]].filter(([, x0, x1]) => x1 > x0);
  }

  // ---------------------------------------------------------------------------------------
  // drawing

  function requestDraw() {
    if (!drawPending) { drawPending = true; requestAnimationFrame(draw); }
  }

  function draw() {
    drawPending = false;
    st.frames++;
    st.origin = [tx, ty];
    ctx.fillStyle = BG;
    ctx.fillRect(0, 0, cw, ch);
    if (!img) return;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, tx, ty, W * st.s, H * st.s);
    for (const k of ["a", "b"]) Object.assign(st.drawn[k], { wanted: 0, done: 0, placeholder: 0 });
    if (st.S !== null) {
      for (const [k, x0, x1] of regions()) {
        const L = st.layers[k], d = st.drawn[k];
        ctx.save();
        ctx.beginPath();
        ctx.rect(x0, 0, x1 - x0, ch);
        ctx.clip();
        for (const t of grid(st.S, x0, x1)) {
          d.wanted++;
          const bmp = cache.get(tileKey(L, st.S, t));
          if (bmp) {
            d.done++;
            ctx.drawImage(bmp, tx + t.x * t.fx, ty + t.y * t.fy, t.w * t.fx, t.h * t.fy);
          } else {
            d.placeholder++;
          }
        }
        ctx.restore();
      }
    }
    updateChrome();
  }

  function updateChrome() {
    const S = roundS(st.s);
    const [oh, ow] = outSize(S);
    st.outW = ow; st.outH = oh;
    $("readout").textContent = `${Math.round(st.s * 100)}% · ×${S} → ${ow}×${oh}`;
    const div = $("divider");
    div.hidden = !compareOn();
    div.style.left = `${(st.split * cw) / dpr}px`;
    $("split").hidden = !compareOn();
    $("label-a").textContent = compareOn() ? labelOf(st.layers.a) : "";
    $("label-b").textContent = compareOn() ? labelOf(st.layers.b) : "";
    const left = queue.length + inflight.size;
    st.queued = queue.length;
    st.inflight = inflight.size;
    $("progress").hidden = left === 0;
    $("progress-bar").style.width = `${genTotal ? (100 * genDone) / genTotal : 0}%`;
    $("export").disabled = st.s <= 1;
  }

  function labelOf(L) {
    return L.denoise === null ? L.model : `${L.model} · denoise ${L.denoise}`;
  }

  // ---------------------------------------------------------------------------------------
  // tiles

  function tileKey(L, S, t) { return `${layerKey(L)}|${S}|${t.x}|${t.y}`; }

  function cachePut(key, bmp) {
    cache.set(key, bmp);
    while (cache.size > CACHE_MAX) {
      const [old, b] = cache.entries().next().value;
      cache.delete(old);
      b.close();
    }
  }

  function scheduleSettle() {
    clearTimeout(settleTimer);
    settleTimer = setTimeout(settle, SETTLE_MS);
  }

  // the view has stopped moving: snap to a scale of 1/100 steps and ask for what is missing
  function settle() {
    st.gen++;
    const aborted = inflight.size > 0;
    for (const c of inflight.values()) c.abort();
    inflight.clear();
    queue = [];
    genDone = 0; genTotal = 0;
    tx = Math.round(tx); ty = Math.round(ty); // pixels on device pixels (100 %, and tiles)
    if (!img || st.s <= 1) {
      if (aborted) fetch(url("/api/moved", { view: viewId, gen: st.gen }), { method: "POST" })
        .catch(() => {});
      st.S = null;
      requestDraw();
      return;
    }
    const S = roundS(st.s);
    if (S !== st.s) {
      setScaleQuiet(S);
      tx = Math.round(tx); ty = Math.round(ty);
    }
    st.S = S;
    const cx = cw / 2, cy = ch / 2;
    for (const [k, x0, x1] of regions()) {
      const L = st.layers[k];
      for (const t of grid(S, x0, x1)) {
        const key = tileKey(L, S, t);
        if (cache.has(key)) { // most recently used: to the end
          const bmp = cache.get(key);
          cache.delete(key);
          cache.set(key, bmp);
          continue;
        }
        const dx = tx + (t.x + t.w / 2) * t.fx - cx, dy = ty + (t.y + t.h / 2) * t.fy - cy;
        queue.push({ key, L: { ...L }, S, t, d: dx * dx + dy * dy, gen: st.gen });
      }
    }
    queue.sort((p, q) => p.d - q.d);
    genTotal = queue.length;
    if (aborted && !queue.length) { // nothing new to ask: tell the server to drop the old
      fetch(url("/api/moved", { view: viewId, gen: st.gen }), { method: "POST" }).catch(() => {});
    }
    requestDraw();
    pump();
  }

  function setScaleQuiet(s1) {
    tx = cw / 2 - ((cw / 2 - tx) * s1) / st.s;
    ty = ch / 2 - ((ch / 2 - ty) * s1) / st.s;
    st.s = s1;
  }

  function pump() {
    while (!st.hold && inflight.size < MAX_INFLIGHT && queue.length) fetchTile(queue.shift());
    updateChrome();
  }

  function fetchTile(q) {
    const ctl = new AbortController();
    inflight.set(q.key, ctl);
    const p = { image: st.image, scale: String(q.S), x: q.t.x, y: q.t.y, w: q.t.w, h: q.t.h,
      model: q.L.model, view: viewId, gen: q.gen };
    if (q.L.denoise !== null) p.denoise = String(q.L.denoise);
    st.requests++;
    fetch(url("/api/tile", p), { signal: ctl.signal })
      .then(async (r) => {
        if (r.status === 409) { st.stale++; return; }
        if (!r.ok) throw new Error((await r.text()).trim() || `HTTP ${r.status}`);
        const bmp = await createImageBitmap(await r.blob());
        cachePut(q.key, bmp);
        st.loaded++;
        requestDraw();
      })
      .catch((e) => {
        if (e.name === "AbortError") return;
        st.failed++;
        showError(`tile: ${e.message}`);
      })
      .finally(() => {
        if (inflight.get(q.key) === ctl) inflight.delete(q.key);
        if (q.gen === st.gen) genDone++;
        pump();
      });
  }

  // ---------------------------------------------------------------------------------------
  // input: wheel, drag, pinch, keys, double-click

  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const k = e.deltaMode === 1 ? 0.05 : e.deltaMode === 2 ? 1 : 0.0015;
    setScale(st.s * Math.exp(-e.deltaY * k), e.offsetX * dpr, e.offsetY * dpr);
  }, { passive: false });

  const pointers = new Map();
  let pinch = null;
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.offsetX * dpr, y: e.offsetY * dpr });
    canvas.classList.add("dragging");
    pinch = null;
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    const n = { x: e.offsetX * dpr, y: e.offsetY * dpr };
    if (pointers.size === 1) {
      panBy(n.x - p.x, n.y - p.y);
    } else if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const before = Math.hypot(a.x - b.x, a.y - b.y);
      pointers.set(e.pointerId, n);
      const [c, d] = [...pointers.values()];
      const after = Math.hypot(c.x - d.x, c.y - d.y);
      if (before > 0) setScale(st.s * (after / before), (c.x + d.x) / 2, (c.y + d.y) / 2);
      panBy(((c.x + d.x) - (a.x + b.x)) / 2, ((c.y + d.y) - (a.y + b.y)) / 2);
    }
    pointers.set(e.pointerId, n);
  });
  const up = (e) => {
    pointers.delete(e.pointerId);
    if (!pointers.size) canvas.classList.remove("dragging");
  };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  canvas.addEventListener("dblclick", (e) => setScale(st.s * 2, e.offsetX * dpr, e.offsetY * dpr));

  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    const step = 0.1 * Math.min(cw, ch);
    const act = {
      "+": () => setScale(st.s * 1.25), "=": () => setScale(st.s * 1.25),
      "-": () => setScale(st.s / 1.25), "0": fit, "1": () => setScale(1),
      ArrowLeft: () => panBy(step, 0), ArrowRight: () => panBy(-step, 0),
      ArrowUp: () => panBy(0, step), ArrowDown: () => panBy(0, -step),
    }[e.key];
    if (act) { e.preventDefault(); act(); }
  });

  $("zoom-in").onclick = () => setScale(st.s * 1.5);
  $("zoom-out").onclick = () => setScale(st.s / 1.5);
  $("zoom-fit").onclick = fit;
  $("zoom-100").onclick = () => setScale(1);

  // ---------------------------------------------------------------------------------------
  // models, comparison, images

  function fillModels() {
    for (const [id, extra] of [["model-b", []], ["model-a", ["off"]]]) {
      const sel = $(id);
      sel.replaceChildren(...[...extra, ...info.models].map((m) => new Option(m, m)));
    }
  }

  function setLayer(k, model) {
    const L = st.layers[k];
    L.model = model;
    const den = $(`denoise-${k}`);
    if (model in info.denoise) {
      L.denoise = info.denoise[model];
      den.value = L.denoise;
      den.hidden = false;
    } else {
      L.denoise = null;
      den.hidden = true;
    }
    $(`model-${k}`).value = model;
    requestDraw();
    scheduleSettle();
  }

  for (const k of ["a", "b"]) {
    $(`model-${k}`).addEventListener("change", (e) => setLayer(k, e.target.value));
    $(`denoise-${k}`).addEventListener("change", (e) => {
      const v = Math.min(1, Math.max(0, Number(e.target.value) || 0));
      st.layers[k].denoise = Math.round(v * 100) / 100;
      e.target.value = st.layers[k].denoise;
      requestDraw();
      scheduleSettle();
    });
  }
  $("split").addEventListener("input", (e) => {
    st.split = Number(e.target.value) / 1000;
    requestDraw();
    scheduleSettle();
  });

  async function showImage(i) {
    st.image = i;
    const im = new Image();
    im.src = url("/api/image", { image: i });
    await im.decode();
    img = im;
    W = info.images[i].width;
    H = info.images[i].height;
    document.title = `${info.images[i].name} · liif view`;
    for (const b of $("strip").children) b.classList.toggle("current", Number(b.dataset.i) === i);
    fit();
  }

  function fillStrip() {
    const strip = $("strip");
    if (info.images.length < 2) return;
    strip.hidden = false;
    info.images.forEach((im, i) => {
      const b = document.createElement("button");
      b.dataset.i = i;
      b.title = im.name;
      const t = new Image();
      t.src = url("/api/image", { image: i });
      t.alt = im.name;
      b.append(t);
      b.onclick = () => showImage(i);
      strip.append(b);
    });
  }

  // ---------------------------------------------------------------------------------------
  // export: the whole image at the current scale, as a job on the server

  let jobTimer = 0;
  async function post(path, params) {
    const r = await fetch(url(path, params), { method: "POST" });
    return [r, r.ok ? await r.json() : (await r.text()).trim()];
  }

  $("export").onclick = async () => {
    const L = st.layers.b;
    if (L.model === "bicubic") { showError("pick a model to upscale with"); return; }
    const p = { image: st.image, scale: String(roundS(st.s)), model: L.model };
    if (L.denoise !== null) p.denoise = String(L.denoise);
    let [r, body] = await post("/api/export", p);
    if (r.status === 409 && /exists/.test(body)) {
      if (!confirm(`${body.replace(/ \(pass overwrite.*\)/, "")}. Replace it?`)) return;
      [r, body] = await post("/api/export", { ...p, overwrite: 1 });
    }
    if (!r.ok) { showError(`export: ${body}`); return; }
    pollJobs();
  };

  async function pollJobs() {
    clearTimeout(jobTimer);
    const r = await fetch(url("/api/jobs"));
    if (!r.ok) return;
    const jobs = await r.json();
    const j = jobs[jobs.length - 1];
    st.job = j;
    if (!j) return;
    const pct = j.total ? Math.floor((100 * j.done) / j.total) : 0;
    $("job").textContent = j.state === "running" ? `writing ${j.output} ${pct}%` : j.message;
    $("job-cancel").hidden = j.state !== "running";
    $("job-cancel").onclick = () => post("/api/cancel", { job: j.id }).then(pollJobs);
    if (j.state === "running") jobTimer = setTimeout(pollJobs, 700);
  }

  // ---------------------------------------------------------------------------------------

  async function start() {
    const r = await fetch(url("/api/info"));
    if (!r.ok) { showError((await r.text()).trim()); return; }
    info = await r.json();
    TILE = info.tile;
    fillModels();
    setLayer("b", info.model);
    setLayer("a", info.compare);
    fillStrip();
    new ResizeObserver(resize).observe($("stage"));
    resize();
    await showImage(0);
    st.ready = true;
  }

  Object.assign(st, {
    zoomTo: (s) => setScale(s), fit: () => fit(), settleNow: () => settle(),
    pixel: (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data),
    release: () => { st.hold = false; pump(); },
  });
  start().catch((e) => showError(String(e)));
})();
