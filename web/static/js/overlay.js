// Inference result: composites the windowed image, the predicted class map and the label's
// outline on a canvas. Everything after the first load happens here, without the server.
(function () {
  "use strict";
  const FALSE_COLOUR = [[0, 0, 0], [255, 0, 255], [0, 255, 0], [255, 255, 0], [0, 255, 255], [255, 128, 0], [128, 0, 255]];
  // The label outline's colour: the first of these far from every class colour of the current
  // colormap (the dataset's red LV → green), never white (invisible on the bright LV).
  const LABEL_CANDIDATES = [[0, 230, 0], [0, 200, 255], [255, 230, 0], [255, 0, 255]];

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("could not load " + src));
      img.src = src;
    });
  }

  function pixels(img) {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, c.width, c.height);
  }

  function classes(imageData) {
    const out = new Uint8Array(imageData.width * imageData.height);
    for (let i = 0; i < out.length; i++) out[i] = imageData.data[i * 4];
    return out;
  }

  // Pixels whose class differs from a 4-neighbour, grown to the requested width.
  function outline(map, w, h, width) {
    const edge = new Uint8Array(w * h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const i = y * w + x, c = map[i];
      if (!c) continue;
      if (x === 0 || y === 0 || x === w - 1 || y === h - 1 || map[i - 1] !== c || map[i + 1] !== c || map[i - w] !== c || map[i + w] !== c) edge[i] = c;
    }
    if (width <= 1) return edge;
    const grown = new Uint8Array(w * h), r = width - 1;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const c = edge[y * w + x];
      if (!c) continue;
      for (let dy = -r; dy <= r; dy++) for (let dx = -r; dx <= r; dx++) {
        const yy = y + dy, xx = x + dx;
        if (yy >= 0 && yy < h && xx >= 0 && xx < w) grown[yy * w + xx] = c;
      }
    }
    return grown;
  }

  // The input image's colormaps (applied to its gray level after the gamma).
  function inputColour(map, v) {
    if (map === "inverted") return [255 - v, 255 - v, 255 - v];
    const t = v / 255;
    if (map === "hot") return [Math.min(255, 3 * 255 * t), Math.min(255, Math.max(0, 3 * 255 * t - 255)), Math.max(0, 3 * 255 * t - 510)];
    if (map === "jet") {
      const f = x => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * t - x))));
      return [f(3), f(2), f(1)];
    }
    return [v, v, v];
  }

  function colour(scheme, palette, c) {
    if (scheme === "gray") { const v = c ? Math.round(255 * Math.min(1, 0.4 + 0.6 * c / 3)) : 0; return [v, v, v]; }
    if (scheme === "false") return FALSE_COLOUR[c % FALSE_COLOUR.length];
    return palette[c] || FALSE_COLOUR[c % FALSE_COLOUR.length];
  }

  function labelColour(scheme, palette, n) {
    const used = [];
    for (let c = 1; c < n; c++) used.push(colour(scheme, palette, c));
    const far = cand => Math.min(Infinity, ...used.map(u => Math.hypot(u[0] - cand[0], u[1] - cand[1], u[2] - cand[2])));
    let best = LABEL_CANDIDATES[0], bestD = -1;
    for (const cand of LABEL_CANDIDATES) {
      const d = scheme === "gray" ? Infinity : far(cand);
      if (d >= 150) return cand;
      if (d > bestD) { best = cand; bestD = d; }
    }
    return best;
  }

  async function setup(view) {
    const info = JSON.parse(view.dataset.result);
    const canvas = view.querySelector("canvas");
    const [img, pred, lab, prob] = await Promise.all([
      loadImage(view.dataset.image), loadImage(view.dataset.prediction),
      view.dataset.label ? loadImage(view.dataset.label) : Promise.resolve(null),
      view.dataset.probability ? loadImage(view.dataset.probability) : Promise.resolve(null)]);
    const base = pixels(img), w = base.width, h = base.height;
    const argmaxMap = classes(pixels(pred));
    const probMap = prob ? classes(pixels(prob)) : null;  // p(foreground) x 255
    let predMap = argmaxMap;
    let highlight = null;  // the class the pointer is on in the legend: only it is coloured
    let drawnScheme = null;  // the colormap the legend was drawn for
    const labMap = lab ? classes(pixels(lab)) : null;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    const q = sel => view.querySelector(sel);
    const controls = {
      scheme: q(".ov-colormap"), opacity: q(".ov-opacity"), mask: q(".ov-mask"),
      outline: q(".ov-outline"), label: q(".ov-label"), width: q(".ov-width"),
      gamma: q(".ov-gamma"), input: q(".ov-input-colormap"), thresholdOn: q(".ov-threshold-on"),
      threshold: q(".ov-threshold"),
    };
    // what Reset view restores: every control as the page drew it first
    const defaults = new Map(Object.values(controls).filter(Boolean).map(c => [c, c.type === "checkbox" ? c.checked : c.value]));

    function render() {
      const thresholded = probMap && controls.thresholdOn && controls.thresholdOn.checked;
      const cut = controls.threshold ? controls.threshold.value / 100 : 0.5;
      predMap = thresholded ? probMap.map(p => (p >= cut * 255 ? 1 : 0)) : argmaxMap;
      const gamma = controls.gamma ? controls.gamma.value / 100 : 1;
      const inputMap = controls.input ? controls.input.value : "gray";
      const scheme = controls.scheme ? controls.scheme.value : "dataset";
      const alpha = controls.opacity ? controls.opacity.value / 100 : 0.45;
      const lw = controls.width ? parseInt(controls.width.value, 10) : 1;
      const out = ctx.createImageData(w, h);
      const predEdge = (!controls.outline || controls.outline.checked) ? outline(predMap, w, h, lw) : null;
      const labEdge = labMap && (!controls.label || controls.label.checked) ? outline(labMap, w, h, lw) : null;
      // DIGITS' mask: black laid over what the model did not segment, 0 (off) to 1 (hidden).
      const mask = controls.mask ? controls.mask.value / 100 : 0;
      const labCol = labelColour(scheme, info.palette, Math.max(2, (info.classes || []).length));
      for (let i = 0; i < w * h; i++) {
        let r = base.data[i * 4], g = base.data[i * 4 + 1], b = base.data[i * 4 + 2];
        if (gamma !== 1 || inputMap !== "gray") {
          const level = v => 255 * Math.pow(v / 255, 1 / gamma);
          if (inputMap === "gray") { r = level(r); g = level(g); b = level(b); }
          else [r, g, b] = inputColour(inputMap, level((r + g + b) / 3));
        }
        const c = highlight === null || predMap[i] === highlight ? predMap[i] : 0;
        if (c) {
          const col = colour(scheme, info.palette, c);
          r = r * (1 - alpha) + col[0] * alpha; g = g * (1 - alpha) + col[1] * alpha; b = b * (1 - alpha) + col[2] * alpha;
        } else if (mask) {
          r *= 1 - mask; g *= 1 - mask; b *= 1 - mask;
        }
        if (predEdge && predEdge[i]) [r, g, b] = colour(scheme, info.palette, predEdge[i]);
        if (labEdge && labEdge[i]) [r, g, b] = labCol;
        out.data[i * 4] = r; out.data[i * 4 + 1] = g; out.data[i * 4 + 2] = b; out.data[i * 4 + 3] = 255;
      }
      ctx.putImageData(out, 0, 0);
      const label = (sel, text) => { const e = q(sel); if (e) e.textContent = text; };
      label(".ov-opacity-value", Math.round(alpha * 100) + "%");
      label(".ov-mask-value", Math.round(mask * 100) + "%");
      label(".ov-width-value", lw + " px");
      label(".ov-gamma-value", gamma.toFixed(2));
      label(".ov-threshold-value", cut.toFixed(2));
      view.dataset.thresholded = thresholded ? "1" : "0";
      canvas.dataset.renders = String((parseInt(canvas.dataset.renders || "0", 10)) + 1);
      if (scheme !== drawnScheme) { legend(scheme); drawnScheme = scheme; }  // not under the pointer on hover
      view.querySelectorAll(".ov-legend li[data-class]").forEach(li => li.classList.toggle("highlight", Number(li.dataset.class) === highlight));
    }

    function legend(scheme) {
      const ul = q(".ov-legend");
      if (!ul) return;
      ul.innerHTML = "";
      (info.classes || []).forEach((name, c) => {
        const li = document.createElement("li");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = "rgb(" + colour(scheme, info.palette, c).join(",") + ")";
        li.appendChild(sw);
        li.appendChild(document.createTextNode(name + (c === 0 ? "" : " (prediction)")));
        li.dataset.class = String(c);
        if (c) {  // pointing at a class shows it alone; leaving shows them all again
          li.addEventListener("mouseenter", () => { highlight = c; render(); });
          li.addEventListener("mouseleave", () => { highlight = null; render(); });
        }
        ul.appendChild(li);
      });
      if (labMap) {
        const li = document.createElement("li");
        const sw = document.createElement("span");
        sw.className = "swatch swatch-outline";
        sw.style.borderColor = "rgb(" + labelColour(scheme, info.palette, Math.max(2, (info.classes || []).length)).join(",") + ")";
        li.appendChild(sw);
        li.appendChild(document.createTextNode("label (ground truth) outline"));
        ul.appendChild(li);
      }
    }

    const reset = q(".ov-reset");
    if (reset) reset.addEventListener("click", () => {
      defaults.forEach((value, control) => { if (control.type === "checkbox") control.checked = value; else control.value = value; });
      highlight = null;
      render();
    });
    Object.values(controls).forEach(c => c && c.addEventListener("input", render));
    Object.values(controls).forEach(c => c && c.addEventListener("change", render));
    render();
    view.dataset.ready = "1";
  }

  document.querySelectorAll(".overlay-view").forEach(v => setup(v).catch(err => {
    v.insertAdjacentHTML("beforeend", '<p class="error-text"></p>');
    v.lastElementChild.textContent = err.message;
  }));
})();
