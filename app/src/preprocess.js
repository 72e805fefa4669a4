// mushroom/images.resize_with_pad in JavaScript, integer for integer: the long side scaled to
// `size` (aspect kept, Python's round), Pillow's Image.resize(..., BILINEAR, reducing_gap=3.0)
// (first Image.reduce by an integer factor, then the two-pass convolution resample with Pillow's
// 22-bit fixed-point coefficients), then centred on a black square. A canvas drawImage resize
// would differ from Pillow by several levels per pixel (different filter, no antialiasing
// guarantee); this gives the same bytes, checked by tests/test_app.py on random images against
// Pillow itself. Pure functions on RGBA pixel arrays (as a canvas's getImageData gives them).

const PRECISION_BITS = 22;            // 32 - 8 - 2, Resample.c for 8-bit images
const REDUCING_GAP = 3.0;
const BILINEAR_SUPPORT = 1.0;

function roundHalfEven(x) {           // Python's round()
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// Image.reduce((fx, fy)): each output pixel the rounded mean of its fx x fy block (the last row and
// column of blocks partial, as ImagingReduceCorners does), with Reduce.c's arithmetic:
// ((sum + n / 2) * trunc(float32(2^32) / float32(256 n))) >> 24.
function reduce(src, w, h, fx, fy) {
  const ow = Math.ceil(w / fx), oh = Math.ceil(h / fy);
  const out = new Uint8ClampedArray(ow * oh * 4);
  const mult = new Map();
  const multiplier = (n) => {
    if (!mult.has(n)) mult.set(n, Math.trunc(Math.fround(4294967296 / Math.fround(256 * n))));
    return mult.get(n);
  };
  for (let y = 0; y < oh; y++) {
    const y0 = y * fy, y1 = Math.min(y0 + fy, h);
    for (let x = 0; x < ow; x++) {
      const x0 = x * fx, x1 = Math.min(x0 + fx, w);
      const n = (x1 - x0) * (y1 - y0);
      const amend = Math.floor(n / 2), m = multiplier(n);
      let r = 0, g = 0, b = 0;
      for (let yy = y0; yy < y1; yy++) {
        let i = (yy * w + x0) * 4;
        for (let xx = x0; xx < x1; xx++, i += 4) { r += src[i]; g += src[i + 1]; b += src[i + 2]; }
      }
      const o = (y * ow + x) * 4;
      // products stay below 2^32, so plain doubles are exact here
      out[o] = Math.floor(((r + amend) * m) / 16777216);
      out[o + 1] = Math.floor(((g + amend) * m) / 16777216);
      out[o + 2] = Math.floor(((b + amend) * m) / 16777216);
      out[o + 3] = 255;
    }
  }
  return {data: out, width: ow, height: oh};
}

// Resample.c precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
function coefficients(inSize, in0, in1, outSize) {
  const scale = Math.fround(in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = BILINEAR_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const k = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const pre = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const wgt = t < 1.0 ? 1.0 - t : 0.0;
      pre[x] = wgt;
      ww += wgt;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? pre[x] / ww : pre[x];
      k[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return {k, bounds, ksize};
}

function clip8(v) {
  if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

function horizontalPass(src, w, rows, offset, outW, hc) {
  const half = 1 << (PRECISION_BITS - 1);
  const out = new Uint8ClampedArray(outW * rows * 4);
  for (let yy = 0; yy < rows; yy++) {
    const line = (yy + offset) * w * 4;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = hc.bounds[xx * 2], xmax = hc.bounds[xx * 2 + 1], kb = xx * hc.ksize;
      let s0 = half, s1 = half, s2 = half;
      for (let x = 0; x < xmax; x++) {
        const i = line + (x + xmin) * 4, kv = hc.k[kb + x];
        s0 += src[i] * kv; s1 += src[i + 1] * kv; s2 += src[i + 2] * kv;
      }
      const o = (yy * outW + xx) * 4;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2); out[o + 3] = 255;
    }
  }
  return out;
}

function verticalPass(src, w, outH, vc) {
  const half = 1 << (PRECISION_BITS - 1);
  const out = new Uint8ClampedArray(w * outH * 4);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vc.bounds[yy * 2], ymax = vc.bounds[yy * 2 + 1], kb = yy * vc.ksize;
    for (let xx = 0; xx < w; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const i = ((y + ymin) * w + xx) * 4, kv = vc.k[kb + y];
        s0 += src[i] * kv; s1 += src[i + 1] * kv; s2 += src[i + 2] * kv;
      }
      const o = (yy * w + xx) * 4;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2); out[o + 3] = 255;
    }
  }
  return out;
}

// ImagingResampleInner for RGB(A) 8-bit images with a float box. Each pass rounds to 8 bits, so
// the order matters: Pillow runs the vertical pass first when the height shrinks by more than
// twice as many pixels as the width (Resample.c), else the horizontal pass first, over only the
// rows the vertical pass reads.
function resample(src, w, h, outW, outH, box) {
  const b = box.map(Math.fround);      // Pillow passes the box as C floats
  const needH = outW !== w || b[0] !== 0 || b[2] !== outW;
  const needV = outH !== h || b[1] !== 0 || b[3] !== outH;
  const horizontalFirst = !((h - outH) > 0 && (h - outH) > (w - outW) * 2);
  let cur = src, cw = w, ch = h;
  const vc = needV || (needH && horizontalFirst) ? coefficients(h, b[1], b[3], outH) : null;
  const hc = needH ? coefficients(w, b[0], b[2], outW) : null;
  if (horizontalFirst) {
    if (needH) {
      const yFirst = vc.bounds[0];
      const yLast = vc.bounds[outH * 2 - 2] + vc.bounds[outH * 2 - 1];
      for (let i = 0; i < outH; i++) vc.bounds[i * 2] -= yFirst;
      cur = horizontalPass(cur, cw, yLast - yFirst, yFirst, outW, hc);
      cw = outW; ch = yLast - yFirst;
    }
    if (needV) { cur = verticalPass(cur, cw, outH, vc); ch = outH; }
  } else {
    if (needV) { cur = verticalPass(cur, cw, outH, vc); ch = outH; }
    if (needH) { cur = horizontalPass(cur, cw, ch, 0, outW, hc); cw = outW; }
  }
  return {data: cur, width: cw, height: ch};
}

// Image.resize((nw, nh), BILINEAR, reducing_gap=3.0) of a whole RGB image.
export function resizeBilinear(src, w, h, nw, nh) {
  if (nw === w && nh === h) return {data: src, width: w, height: h};
  let box = [0, 0, w, h];
  let img = {data: src, width: w, height: h};
  const fx = Math.trunc(w / nw / REDUCING_GAP) || 1;
  const fy = Math.trunc(h / nh / REDUCING_GAP) || 1;
  if (fx > 1 || fy > 1) {
    // Image._get_safe_box grows the box by the filter's support; for the whole image it stays
    // the whole image, so the reduce covers everything and the box shrinks by the factors.
    img = reduce(src, w, h, fx, fy);
    box = [0, 0, w / fx, h / fy];
  }
  return resample(img.data, img.width, img.height, nw, nh, box);
}

// images.resize_with_pad: RGBA pixels (w x h) -> uint8 RGB (size x size x 3), black borders.
export function resizeWithPad(rgba, w, h, size) {
  const scale = size / Math.max(w, h);
  const nw = Math.max(1, roundHalfEven(w * scale)), nh = Math.max(1, roundHalfEven(h * scale));
  const img = resizeBilinear(rgba, w, h, nw, nh);
  const out = new Uint8Array(size * size * 3);
  const top = Math.floor((size - nh) / 2), left = Math.floor((size - nw) / 2);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      const i = (y * img.width + x) * 4, o = ((top + y) * size + left + x) * 3;
      out[o] = img.data[i]; out[o + 1] = img.data[i + 1]; out[o + 2] = img.data[i + 2];
    }
  }
  return out;
}
