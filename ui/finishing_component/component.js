// The finishing panel as a Streamlit custom component (protocol v1, no build step, no library).
// Python sends the screen-sized copy of the result (PNG bytes, exactly the pixels ui/finishing.py finishes),
// the original at the same size (JPEG, "before"), the scale and the current settings. Sliders change the
// preview here, in the page; the chosen settings go back to Python (setComponentValue) when a slider is
// released, or a moment after the last change, so "Apply to the full image" uses the same values.
// Presets (sent by Python) set every slider at once; the sliders stay adjustable afterwards. The view is
// page-wide: "fit" scales the copy to the page, "pixels" shows it at 100 % (one image pixel per CSS pixel).
"use strict";

(function () {
  const API_VERSION = 1;
  const SEND_DELAY_MS = 350;

  function send(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }
  const Streamlit = {
    ready: () => send("streamlit:componentReady", { apiVersion: API_VERSION }),
    setValue: (value) => send("streamlit:setComponentValue", { value: value, dataType: "json" }),
    setHeight: (height) => send("streamlit:setFrameHeight", { height: height }),
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    imageId: null, scale: 1, fullSize: [0, 0], finisher: null, imageData: null, ctx: null,
    settings: null, sent: null, inputs: {}, pendingSince: null, frameRequested: false, sendTimer: null,
    lastComputeMs: null, loading: null, presets: [], presetButtons: [],
  };
  // measurements read by the browser test and bench: one entry per drawn frame
  window.__finish = { state: state, frames: [], ready: false };

  function fmt(value, step) {
    const digits = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step) - 1e-9));
    return Number(value).toFixed(digits);
  }

  function buildControls(sliders) {
    const box = $("controls");
    box.textContent = "";
    for (const [key, label, low, high, step, help] of sliders) {
      const wrap = document.createElement("div");
      wrap.className = "ctl";
      const id = "s_" + key;
      const lab = document.createElement("label");
      lab.htmlFor = id;
      const name = document.createElement("span");
      name.textContent = label;
      const out = document.createElement("output");
      out.id = id + "_value";
      lab.append(name, out);
      const input = document.createElement("input");
      Object.assign(input, { type: "range", id: id, min: low, max: high, step: step });
      input.setAttribute("aria-label", label);
      input.dataset.key = key;
      const hint = document.createElement("div");
      hint.className = "help";
      hint.textContent = help || "";
      wrap.append(lab, input, hint);
      box.append(wrap);
      input.addEventListener("input", (event) => onInput(key, event));
      input.addEventListener("change", () => sendSoon(0));
      state.inputs[key] = { input: input, out: out, step: step };
    }
    const reset = document.createElement("button");
    reset.id = "reset";
    reset.type = "button";
    reset.textContent = "Reset";
    reset.addEventListener("click", (event) => {
      for (const key of Object.keys(state.inputs)) state.settings[key] = state.defaults[key];
      syncInputs();
      requestDraw(event.timeStamp);
      sendSoon(0);
    });
    box.append(reset);
  }

  function buildPresets(presets) {
    const box = $("presets");
    box.textContent = "";
    state.presets = presets || [];
    state.presetButtons = [];
    if (!state.presets.length) return;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "Preset:";
    box.append(label);
    for (const [name, settings] of state.presets) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = name;
      button.dataset.preset = name;
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", (event) => {
        state.settings = Object.assign({}, state.defaults, settings);
        syncInputs();
        requestDraw(event.timeStamp);
        sendSoon(0);
      });
      box.append(button);
      state.presetButtons.push([button, settings]);
    }
    markPreset();
  }

  // the preset whose values the sliders show now (none after a slider is moved away from it)
  function markPreset() {
    let active = null;
    for (const [button, settings] of state.presetButtons) {
      const full = Object.assign({}, state.defaults, settings);
      const same = Object.keys(state.inputs).every((k) => Math.abs(full[k] - state.settings[k]) < 1e-9);
      button.setAttribute("aria-pressed", same && !active ? "true" : "false");
      if (same && !active) active = button.dataset.preset;
    }
    window.__finish.preset = active;
  }

  function syncInputs() {
    for (const [key, entry] of Object.entries(state.inputs)) {
      entry.input.value = state.settings[key];
      entry.out.textContent = fmt(state.settings[key], entry.step);
    }
    markPreset();
  }

  function onInput(key, event) {
    const entry = state.inputs[key];
    state.settings[key] = parseFloat(entry.input.value);
    entry.out.textContent = fmt(state.settings[key], entry.step);
    markPreset();
    requestDraw(event.timeStamp);
    sendSoon(SEND_DELAY_MS);
  }

  // coalesce input events to one computation per frame; latency counts from the earliest pending input
  function requestDraw(since) {
    const now = performance.now();
    const start = since && since <= now ? since : now;
    if (state.pendingSince === null || start < state.pendingSince) state.pendingSince = start;
    if (!state.frameRequested) {
      state.frameRequested = true;
      requestAnimationFrame(draw);
    }
  }

  function draw() {
    state.frameRequested = false;
    if (!state.finisher) return;
    const since = state.pendingSince;
    state.pendingSince = null;
    const started = performance.now();
    const local = window.FinishMath.previewSettings(state.settings, state.scale);
    state.finisher.render(local, state.imageData.data);
    state.ctx.putImageData(state.imageData, 0, 0);
    const drawn = performance.now();
    state.lastComputeMs = drawn - started;
    const record = { compute_ms: drawn - started, input_to_drawn_ms: since === null ? null : drawn - since,
                     settings: Object.assign({}, state.settings) };
    window.__finish.frames.push(record);
    requestAnimationFrame(() => { record.input_to_next_frame_ms = since === null ? null : performance.now() - since; });
    const [w, h] = state.fullSize;
    const part = state.imageData.width < w || state.imageData.height < h;
    const what = state.pixels
      ? (part ? `a ${state.imageData.width}×${state.imageData.height} part at 100 %` : "the whole photo at 100 %")
      : `preview ${state.imageData.width}×${state.imageData.height}`;
    $("caption").textContent = `Restored image ${w}×${h} px; ${what} computed in your browser in ` +
      `${state.lastComputeMs.toFixed(0)} ms. Drag across the image to compare.`;
  }

  function sendSoon(delay) {
    clearTimeout(state.sendTimer);
    state.sendTimer = setTimeout(() => {
      const value = Object.assign({}, state.settings);
      const text = JSON.stringify(value);
      if (text !== state.sent) {
        state.sent = text;
        Streamlit.setValue(value);
      }
    }, delay);
  }

  async function decodePixels(bytes, mime) {
    const bitmap = await createImageBitmap(new Blob([bytes], { type: mime }),
      { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const n = bitmap.width * bitmap.height, rgb = new Float32Array(n * 3);
    for (let p = 0; p < n; p++) {
      rgb[p * 3] = rgba[p * 4]; rgb[p * 3 + 1] = rgba[p * 4 + 1]; rgb[p * 3 + 2] = rgba[p * 4 + 2];
    }
    return { rgb: rgb, width: bitmap.width, height: bitmap.height };
  }

  // "pixels": one image pixel per CSS pixel, scrollable; otherwise as wide as the page allows, and no
  // taller than maxHeight (portrait photos stay on screen)
  function layout(width, height, maxHeight, pixels) {
    const cmp = $("cmp");
    $("viewport").classList.toggle("pixels", !!pixels);
    const cssWidth = pixels ? width : Math.max(100, Math.round(maxHeight * width / height));
    cmp.style.width = cssWidth + "px";
    cmp.style.aspectRatio = `${width} / ${height}`;
  }

  async function loadImage(args) {
    const id = args.image_id;
    state.loading = id;
    const decoded = await decodePixels(args.image, "image/png");
    if (state.loading !== id) return;     // a newer image arrived meanwhile
    const canvas = $("after");
    canvas.width = decoded.width;
    canvas.height = decoded.height;
    state.ctx = canvas.getContext("2d");
    state.imageData = state.ctx.createImageData(decoded.width, decoded.height);
    state.finisher = new window.FinishMath.Finisher(decoded.rgb, decoded.width, decoded.height);
    const before = $("before");
    if (before.dataset.url) URL.revokeObjectURL(before.dataset.url);
    before.dataset.url = URL.createObjectURL(new Blob([args.before], { type: args.before_mime || "image/jpeg" }));
    before.src = before.dataset.url;
    layout(decoded.width, decoded.height, args.max_height || 720, args.pixels);
    state.imageId = id;
    requestDraw(null);
    window.__finish.ready = true;
    window.__finish.imageId = id;
  }

  function applyTheme(theme) {
    if (!theme) return;
    const root = document.documentElement.style;
    if (theme.textColor) root.setProperty("--text", theme.textColor);
    if (theme.primaryColor) root.setProperty("--primary", theme.primaryColor);
    if (theme.font) root.setProperty("--font", theme.font);
  }

  function onRender(data) {
    const args = data.args;
    applyTheme(data.theme);
    if (!state.settings) {                 // first render: the settings Python holds
      state.defaults = Object.assign({}, args.defaults);
      state.settings = Object.assign({}, args.defaults, args.settings);
      state.sent = JSON.stringify(state.settings);
      buildControls(args.sliders);
      buildPresets(args.presets);
      syncInputs();
    }
    $("before-tag").textContent = args.before_label || "Original";
    $("after-tag").textContent = args.after_label || "Restored";
    state.scale = args.scale;
    state.fullSize = args.full_size;
    state.pixels = !!args.pixels;
    if (args.image_id !== state.imageId && args.image_id !== state.loading) {
      window.__finish.ready = false;
      loadImage(args).catch((err) => { $("caption").textContent = "Preview failed: " + err; });
    }
  }

  window.addEventListener("message", (event) => {
    if (event.data && event.data.type === "streamlit:render") onRender(event.data);
  });
  $("split").addEventListener("input", (event) => $("cmp").style.setProperty("--pos", event.target.value + "%"));
  new ResizeObserver(() => Streamlit.setHeight(Math.ceil(document.documentElement.scrollHeight)))
    .observe(document.body);
  Streamlit.ready();
})();
