// multilabel-imagenet label-regions: open an image, drag a box or click a proposal, show the labeler's ranking.
"use strict";

const state = { image: null, proposals: [], maskImages: [], selected: null, box: null, drag: null, offset: 0, query: "" };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
}

function loadPicture(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load a picture"));
    img.src = src;
  });
}

async function loadInfo() {
  const info = await api("api/info");
  $("model").textContent = `${info.checkpoint} · ${info.backbone} at ${info.input_size} px · proposals: ${info.proposals}`;
}

async function loadImages(reset) {
  if (reset) {
    state.offset = 0;
    $("image-list").replaceChildren();
  }
  const page = await api(`api/images?q=${encodeURIComponent(state.query)}&offset=${state.offset}&limit=100`);
  for (const item of page.images) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "image-item";
    button.dataset.imageId = item.id;
    button.textContent = item.id;
    button.title = item.path + (item.label ? ` (original label: ${item.label})` : "");
    button.classList.toggle("active", item.id === state.image);
    button.addEventListener("click", () => openImage(item.id).catch(showError));
    const li = document.createElement("li");
    li.append(button);
    $("image-list").append(li);
  }
  state.offset += page.images.length;
  $("image-count").textContent = `${page.total} images`;
  $("more").hidden = state.offset >= page.total;
}

function scale() {
  return $("photo").naturalWidth / $("photo").clientWidth;
}

function sizeCanvas() {
  const canvas = $("overlay");
  canvas.width = $("photo").clientWidth;
  canvas.height = $("photo").clientHeight;
  draw();
}

function draw() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  state.maskImages.forEach((img, i) => {
    ctx.globalAlpha = state.selected === null || state.selected === i ? 1 : 0.3;
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  });
  ctx.globalAlpha = 1;
  const s = scale();
  ctx.lineWidth = 2;
  if (state.box) {
    const [x0, y0, x1, y1] = state.box.map((v) => v / s);
    ctx.strokeStyle = "#ffeb3b";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  if (state.drag) {
    const d = state.drag;
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    ctx.setLineDash([]);
  }
  document.querySelectorAll(".proposal").forEach((b) => b.classList.toggle("active", Number(b.dataset.index) === state.selected));
}

function clearResults() {
  $("region").textContent = "No region yet.";
  $("ranking").querySelector("tbody").replaceChildren();
  delete $("ranking").dataset.kind;
}

async function openImage(id) {
  showError(null);
  Object.assign(state, { image: id, proposals: [], maskImages: [], selected: null, box: null, drag: null });
  document.querySelectorAll(".image-item").forEach((b) => b.classList.toggle("active", b.dataset.imageId === id));
  $("proposal-list").replaceChildren();
  $("proposal-status").textContent = "";
  $("run-maskcut").hidden = true;
  clearResults();
  const photo = $("photo");
  await new Promise((resolve, reject) => {
    photo.onload = resolve;
    photo.onerror = () => reject(new Error(`could not load image ${id}`));
    photo.src = `api/image/${encodeURIComponent(id)}`;
  });
  $("stage").hidden = false;
  $("hint").textContent = `${id}: ${photo.naturalWidth} x ${photo.naturalHeight}. Drag a box, or click inside a proposal.`;
  sizeCanvas();
  await loadProposals(false);
}

async function loadProposals(run) {
  const id = state.image;
  $("proposal-status").textContent = run ? "running MaskCut..." : "loading proposals...";
  const data = await api(`api/proposals/${encodeURIComponent(id)}${run ? "?run=1" : ""}`);
  if (id !== state.image) return;
  state.proposals = data.proposals;
  state.maskImages = await Promise.all(data.proposals.map((p) => loadPicture(p.png)));
  state.selected = null;
  const list = $("proposal-list");
  list.replaceChildren();
  for (const p of data.proposals) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "proposal";
    button.dataset.index = p.index;
    const stored = p.stored.map((c) => `${c.name} ${c.score.toFixed(2)}`).join(", ");
    button.title = stored ? `stored top classes: ${stored}` : "";
    button.innerHTML = `<span class="swatch" style="background:${p.colour}">${p.index + 1}</span> `;
    button.append(`${p.source} · ${p.area} px`);
    button.addEventListener("click", () => classify({ proposal: p.index }).catch(showError));
    const li = document.createElement("li");
    li.append(button);
    list.append(li);
  }
  const n = data.proposals.length;
  $("proposal-status").textContent = n ? `${n} proposals (${data.source})` : "no proposals for this image: draw a box";
  $("run-maskcut").hidden = !data.maskcut || data.source === "maskcut";
  draw();
}

function describe(region) {
  const [x, y, w, h] = region.bbox;
  const what = region.kind === "box" ? "box" : `proposal ${region.proposal + 1} (${state.proposals[region.proposal].source})`;
  return `${what}: ${region.pixels} px, bounding box x ${x}, y ${y}, ${w} x ${h}`;
}

async function classify(region) {
  showError(null);
  const result = await api("api/classify", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image: state.image, ...region }),
  });
  if (result.image !== state.image) return;
  state.selected = result.region.proposal;
  state.box = result.region.box;
  draw();
  const table = $("ranking");
  table.dataset.kind = result.region.kind;
  table.dataset.proposal = result.region.proposal === null ? "" : result.region.proposal;
  table.dataset.box = result.region.box ? JSON.stringify(result.region.box) : "";
  $("region").textContent = describe(result.region);
  const rows = result.classes.map((c, k) => {
    const tr = document.createElement("tr");
    tr.dataset.class = c.index;
    tr.dataset.probability = c.probability;
    const cells = [String(k + 1), c.name, c.wnid].map((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    });
    cells[2].className = "wnid";
    const p = document.createElement("td");
    p.className = "probability";
    p.innerHTML = `<span class="bar" style="width:${(100 * c.probability).toFixed(1)}%"></span>`;
    p.append(`${(100 * c.probability).toFixed(2)} %`);
    tr.append(...cells, p);
    return tr;
  });
  table.querySelector("tbody").replaceChildren(...rows);
}

function setUp() {
  const canvas = $("overlay");
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.image) return;
    state.drag = { x0: e.offsetX, y0: e.offsetY, x1: e.offsetX, y1: e.offsetY };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!state.drag) return;
    state.drag.x1 = e.offsetX;
    state.drag.y1 = e.offsetY;
    draw();
  });
  canvas.addEventListener("pointerup", () => {
    const d = state.drag;
    state.drag = null;
    if (!d) return;
    const s = scale();
    const click = Math.abs(d.x1 - d.x0) < 4 && Math.abs(d.y1 - d.y0) < 4;
    const region = click ? { point: [d.x1 * s, d.y1 * s] } : { box: [d.x0 * s, d.y0 * s, d.x1 * s, d.y1 * s] };
    classify(region).catch((err) => {
      draw();
      showError(err);
    });
  });
  window.addEventListener("resize", () => state.image && sizeCanvas());
  $("run-maskcut").addEventListener("click", () => loadProposals(true).catch(showError));
  $("more").addEventListener("click", () => loadImages(false).catch(showError));
  let timer = null;
  $("filter").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.query = $("filter").value;
      loadImages(true).catch(showError);
    }, 200);
  });
  $("upload").addEventListener("change", async () => {
    const file = $("upload").files[0];
    if (!file) return;
    try {
      const added = await api(`api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
      $("filter").value = state.query = "";
      await loadImages(true);
      await openImage(added.id);
    } catch (err) {
      showError(err);
    }
  });
  Promise.all([loadInfo(), loadImages(true)]).catch(showError);
}

setUp();
