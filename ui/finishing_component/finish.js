// Finishing maths in the browser: the same Gaussian blur and soft-threshold unsharp mask as ui/finishing.py
// (and the postprocess stage), on a screen-sized copy held as interleaved RGB Float32Arrays in 0..255 levels.
// No Streamlit round trip: a slider change is computed and drawn here.
"use strict";

// OpenCV's cvRound: round half to even.
function roundHalfEven(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// cv::getGaussianKernel(ksize, sigma, CV_32F) with the size cv::GaussianBlur picks for float images:
// ksize = cvRound(sigma * 4 * 2 + 1) | 1. Returns the half kernel: w[0] centre, w[k] for offsets +-k.
function gaussianHalfKernel(sigma) {
  const ksize = Math.max(1, roundHalfEven(sigma * 8 + 1) | 1);
  const radius = (ksize - 1) >> 1;
  const full = new Float64Array(ksize);
  let sum = 0;
  for (let i = 0; i < ksize; i++) {
    const x = i - radius;
    full[i] = Math.exp(-(x * x) / (2 * sigma * sigma));
    sum += full[i];
  }
  const half = new Float32Array(radius + 1);
  for (let k = 0; k <= radius; k++) half[k] = full[radius + k] / sum;
  return half;
}

// BORDER_REFLECT (fedcba|abcdefgh|hgfedcb): the edge pixel is repeated.
function reflectIndex(i, n) {
  if (n === 1) return 0;
  while (i < 0 || i >= n) {
    if (i < 0) i = -i - 1;
    if (i >= n) i = 2 * n - i - 1;
  }
  return i;
}

class Finisher {
  constructor(rgb, width, height) {
    this.src = rgb;            // Float32Array, width * height * 3, 0..255
    this.width = width;
    this.height = height;
    const n = width * height * 3;
    this.ring = null;          // rows of the horizontal pass (see gauss)
    this.blurred = null;       // src blurred by blurSigma (cached per sigma)
    this.blurKey = null;
    this.lowpass = new Float32Array(n);   // blurred base blurred by the sharpen radius (cached)
    this.lowKey = null;
  }

  // Separable Gaussian into `out`. The horizontal pass fills a ring of 2r+1 rows just ahead of the vertical
  // pass, so the working set stays in the CPU cache instead of streaming a whole intermediate image.
  gauss(input, sigma, out) {
    const w = this.width, h = this.height, k = gaussianHalfKernel(sigma), r = k.length - 1;
    const rowLen = w * 3, k0 = k[0], R = 2 * r + 1;
    if (!this.ring || this.ring.length < R * rowLen) this.ring = new Float32Array(R * rowLen);
    const ring = this.ring;
    const idx = new Int32Array(w + 2 * r);
    for (let x = -r; x < w + r; x++) idx[x + r] = reflectIndex(x, w) * 3;
    const inner0 = Math.min(r, w), inner1 = Math.max(inner0, w - r);
    const horizontal = (y) => {
      const base = y * rowLen, dst = (y % R) * rowLen;
      for (let x = 0; x < w; x++) {
        const c = base + x * 3;
        let a0 = input[c] * k0, a1 = input[c + 1] * k0, a2 = input[c + 2] * k0;
        if (x >= inner0 && x < inner1) {
          for (let j = 1, lo = c - 3, hi = c + 3; j <= r; j++, lo -= 3, hi += 3) {
            const kj = k[j];
            a0 += (input[lo] + input[hi]) * kj;
            a1 += (input[lo + 1] + input[hi + 1]) * kj;
            a2 += (input[lo + 2] + input[hi + 2]) * kj;
          }
        } else {
          for (let j = 1; j <= r; j++) {
            const kj = k[j], lo = base + idx[x + r - j], hi = base + idx[x + r + j];
            a0 += (input[lo] + input[hi]) * kj;
            a1 += (input[lo + 1] + input[hi + 1]) * kj;
            a2 += (input[lo + 2] + input[hi + 2]) * kj;
          }
        }
        const d = dst + x * 3;
        ring[d] = a0; ring[d + 1] = a1; ring[d + 2] = a2;
      }
    };
    let done = -1;
    for (let y = 0; y < h; y++) {
      const need = Math.min(h - 1, y + r);
      while (done < need) horizontal(++done);
      const o = y * rowLen, mid = (y % R) * rowLen;
      for (let i = 0; i < rowLen; i++) out[o + i] = ring[mid + i] * k0;
      for (let j = 1; j <= r; j++) {
        const up = (reflectIndex(y - j, h) % R) * rowLen, down = (reflectIndex(y + j, h) % R) * rowLen, kj = k[j];
        for (let i = 0; i < rowLen; i++) out[o + i] += (ring[up + i] + ring[down + i]) * kj;
      }
    }
    return out;
  }

  // settings in preview pixels (already scaled); writes RGBA bytes into `rgba` (Uint8ClampedArray)
  render(settings, rgba) {
    const blurSigma = settings.blur_sigma, amount = settings.sharpen_amount;
    const radius = settings.sharpen_radius, limit = settings.sharpen_threshold;
    let base = this.src;
    if (blurSigma > 0) {
      if (this.blurKey !== blurSigma) {
        this.blurred = this.blurred || new Float32Array(this.src.length);
        this.gauss(this.src, blurSigma, this.blurred);
        this.blurKey = blurSigma;
        this.lowKey = null;
      }
      base = this.blurred;
    }
    const n = this.width * this.height;
    if (amount > 0) {
      const key = blurSigma + "/" + radius;
      if (this.lowKey !== key) {
        this.gauss(base, radius, this.lowpass);
        this.lowKey = key;
      }
      const low = this.lowpass;
      for (let p = 0, q = 0; p < n; p++, q += 4) {
        const i = p * 3;
        for (let c = 0; c < 3; c++) {
          const x = base[i + c];
          let d = x - low[i + c];
          // soft threshold: sign(d) * max(|d| - limit, 0)
          d = d > limit ? d - limit : (d < -limit ? d + limit : 0);
          rgba[q + c] = x + amount * d;      // Uint8ClampedArray clips and rounds half to even
        }
        rgba[q + 3] = 255;
      }
    } else {
      for (let p = 0, q = 0; p < n; p++, q += 4) {
        const i = p * 3;
        rgba[q] = base[i]; rgba[q + 1] = base[i + 1]; rgba[q + 2] = base[i + 2]; rgba[q + 3] = 255;
      }
    }
    return rgba;
  }
}

// Full-size settings -> preview pixels, exactly as ui/finishing.preview does.
function previewSettings(settings, scale) {
  const blur = settings.blur_sigma * scale;
  return {
    blur_sigma: blur >= 0.05 ? blur : 0,
    sharpen_amount: settings.sharpen_amount,
    sharpen_radius: Math.max(0.1, settings.sharpen_radius * scale),
    sharpen_threshold: settings.sharpen_threshold,
  };
}

window.FinishMath = { Finisher, gaussianHalfKernel, previewSettings, reflectIndex };
