// The page of `maskrcnn serve`: send an image to /v1/predict, draw the JSON it returns.
// Masks arrive as COCO RLE with string counts (column-major runs, alternating 0s and 1s, starting
// with 0s); they are decoded here and blended into the picture. The score slider re-filters what
// is drawn and listed without asking the server again. A server started with an API key answers
// 401 until the page sends it: the page asks for it once, keeps it for this tab (sessionStorage) and
// sends it as a bearer token with every request.
"use strict";

const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
  [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180],
  [0, 0, 128], [128, 128, 128],
];
const MASK_ALPHA = 0.5;

const state = { image: null, result: null, masks: [] };
const $ = (id) => document.getElementById(id);

// COCO's compressed RLE string -> run lengths (pycocotools rleFrString).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// RLE {size: [h, w], counts} -> Uint8Array of h*w in row-major order (1 inside the mask).
function decodeMask(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  const mask = new Uint8Array(h * w);
  let i = 0;
  counts.forEach((run, j) => {
    if (j % 2 === 1) {
      for (let n = i; n < i + run; n++) mask[(n % h) * w + Math.floor(n / h)] = 1;
    }
    i += run;
  });
  return mask;
}

const KEY_STORE = "maskrcnn-api-key";

// fetch() with the API key when one is kept; on a 401, ask for the key and try once more.
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401 || attempt > 0) return response;
    const given = window.prompt(key ? "Wrong API key. The key of this server:" : "This server needs its API key:");
    if (!given || !given.trim()) return response;
    sessionStorage.setItem(KEY_STORE, given.trim());
  }
}

function colorOf(index) {
  return PALETTE[index % PALETTE.length];
}

function threshold() {
  return parseFloat($("threshold").value);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function draw() {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  const { image, result } = state;
  if (!image || !result) return;
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  ctx.drawImage(image, 0, 0);
  const t = threshold();
  const shown = result.detections.map((d, i) => [d, i]).filter(([d]) => d.score >= t);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (const [, i] of shown.slice().reverse()) {  // the best detection is blended last, on top
    const mask = state.masks[i], color = colorOf(i);
    if (!mask || mask.length !== canvas.width * canvas.height) continue;
    for (let p = 0; p < mask.length; p++) {
      if (!mask[p]) continue;
      for (let c = 0; c < 3; c++) data[4 * p + c] = data[4 * p + c] * (1 - MASK_ALPHA) + color[c] * MASK_ALPHA;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
  const font = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 50));
  ctx.font = `${font}px sans-serif`;
  ctx.textBaseline = "top";
  for (const [d, i] of shown) {
    const [x, y, w, h] = d.bbox, color = `rgb(${colorOf(i).join(",")})`;
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x, y, w, h);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const ty = Math.max(0, y - font - 4);
    ctx.fillStyle = color;
    ctx.fillRect(x, ty, ctx.measureText(text).width + 6, font + 4);
    ctx.fillStyle = "black";
    ctx.fillText(text, x + 3, ty + 2);
  }
  fillTable(shown);
}

function fillTable(shown) {
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  for (const [d, i] of shown) {
    const row = document.createElement("tr");
    const cells = [
      String(i + 1), "", d.label, d.score.toFixed(3), d.bbox.map((v) => v.toFixed(1)).join(", "),
      state.masks[i] ? String(state.masks[i].reduce((a, b) => a + b, 0)) : "",
    ];
    cells.forEach((text, c) => {
      const cell = document.createElement("td");
      if (c === 1) {
        const swatch = document.createElement("span");
        swatch.style.background = `rgb(${colorOf(i).join(",")})`;
        cell.className = "swatch";
        cell.appendChild(swatch);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    });
    body.appendChild(row);
  }
  const total = state.result.detections.length;
  $("summary").textContent = `${shown.length} of ${total} detections with score ≥ ${threshold().toFixed(2)}`;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this file as an image"));
    image.src = URL.createObjectURL(file);
  });
}

async function predict(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  const response = await api("/v1/predict", { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
  return body;
}

async function run(file) {
  if (!file) return;
  setStatus(`predicting ${file.name}…`);
  try {
    const started = performance.now();
    const result = await predict(file);
    const image = await loadImage(file).catch(() => null);
    if (!image) throw new Error("the server read the image, but this browser cannot show it");
    if (image.naturalWidth !== result.width || image.naturalHeight !== result.height) {
      setStatus(`the browser shows ${image.naturalWidth}x${image.naturalHeight}, the server read `
        + `${result.width}x${result.height}: masks not drawn`, true);
    }
    state.image = image;
    state.result = result;
    state.masks = result.detections.map((d) => (d.segmentation ? decodeMask(d.segmentation) : null));
    draw();
    const ms = Math.round(performance.now() - started);
    if (!$("status").classList.contains("error")) {
      setStatus(`${file.name}: ${result.width}x${result.height}, ${result.detections.length} detections (${ms} ms)`);
    }
  } catch (error) {
    setStatus(`${file.name}: ${error.message}`, true);
  }
}

async function showModel() {
  try {
    const response = await api("/v1/model");
    const info = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${info.detail || response.statusText}`);
    const preset = info.preset ? `, preset ${info.preset}` : "";
    $("model-info").textContent =
      `${info.num_classes} classes (${info.class_names.slice(0, 8).join(", ")}`
      + `${info.num_classes > 8 ? ", …" : ""}) · ${info.backend} on ${info.device}${preset}`;
  } catch (error) {
    $("model-info").textContent = `model information unavailable (${error.message})`;
  }
}

$("file").addEventListener("change", (event) => run(event.target.files[0]));
$("threshold").addEventListener("input", () => {
  $("threshold-value").textContent = threshold().toFixed(2);
  draw();
});
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  run(event.dataTransfer.files[0]);
});
showModel();
