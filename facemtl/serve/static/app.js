// facemtl's page: analyze a photo and draw its faces, enroll the largest face, identify, list people.
// Plain browser JavaScript talking to the same server's JSON API; untrusted text only ever goes in textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, record: null, names: [] };
const MAX_WIDTH = 960;

// Call the API; a non-2xx answer becomes an Error carrying the server's {"error", "detail"}.
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}`, detail: "" }));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${body.error}: ${detail}`);
  }
  return body;
}

// A multipart body holding the current photo under `field`.
function photoForm(field) {
  const data = new FormData();
  data.append(field, state.file, state.file.name || "photo");
  return data;
}

// Headers for gallery-changing calls: the API key when one was typed.
function keyHeaders() {
  const key = $("apikey").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// Load the chosen file as an image element (the browser turns it upright per EXIF, as the server does).
function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this file as an image"));
    image.src = URL.createObjectURL(file);
  });
}

// The lines written beside face k: its name once identified, then the server's labels (age, sex, attributes).
function faceLines(face, k) {
  return [...(state.names[k] ? [state.names[k]] : []), ...(face.labels || [])];
}

// Draw the photo scaled to the canvas with every face's box, landmarks and lines.
function render() {
  const canvas = $("view");
  const { image, record } = state;
  const scale = Math.min(1, MAX_WIDTH / record.width);
  canvas.width = Math.round(record.width * scale);
  canvas.height = Math.round(record.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  ctx.font = "14px system-ui, sans-serif";
  record.faces.forEach((face, k) => {
    const [x1, y1, x2, y2] = face.box.map((v) => v * scale);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#0f0";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = "#f00";
    for (const [x, y] of face.landmarks_refined || face.landmarks) {
      ctx.beginPath();
      ctx.arc(x * scale, y * scale, 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    faceLines(face, k).forEach((line, i) => {
      const y = y2 + 16 * (i + 1);
      ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
      ctx.fillRect(x1, y - 13, ctx.measureText(line).width + 6, 16);
      ctx.fillStyle = "#fff";
      ctx.fillText(line, x1 + 3, y);
    });
  });
  canvas.dataset.faces = String(record.faces.length);
  listFaces();
}

// One list item per face: number, name when known, and the drawn lines.
function listFaces() {
  const list = $("faces");
  list.replaceChildren(...state.record.faces.map((face, k) => {
    const item = document.createElement("li");
    item.dataset.face = String(k);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = state.names[k] || "";
    item.append(who, ` score ${face.score.toFixed(3)}`, ...(face.labels || []).map((l) => `; ${l}`));
    return item;
  }));
}

async function choose(file) {
  if (!file) return;
  Object.assign(state, { file, record: null, names: [] });
  $("enroll").disabled = $("identify").disabled = true;
  status(`Analyzing ${file.name} ...`);
  try {
    const [image, record] = await Promise.all([
      loadImage(file), api("/analyze?labels=3", { method: "POST", body: photoForm("image") }),
    ]);
    Object.assign(state, { image, record });
    render();
    status(`${record.faces.length} face(s) in ${file.name} (${record.width}x${record.height}).`);
    $("enroll").disabled = $("identify").disabled = record.faces.length === 0;
  } catch (error) {
    $("faces").replaceChildren();
    $("view").dataset.faces = "0";
    status(error.message, true);
  }
}

async function enroll(event) {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name || !state.file) return;
  try {
    const data = new FormData();
    data.append("images", state.file, state.file.name || "photo");
    const done = await api(`/gallery/${encodeURIComponent(name)}`,
                           { method: "POST", body: data, headers: keyHeaders() });
    status(`Enrolled ${done.enrolled} face(s) of ${done.name} (${done.total} in the gallery).`);
    await listPeople();
  } catch (error) {
    status(error.message, true);
  }
}

// The index of the analyzed face whose box centre is nearest to `box`'s.
function nearestFace(box) {
  const centre = (b) => [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2];
  const [cx, cy] = centre(box);
  const distances = state.record.faces.map((f) => { const [x, y] = centre(f.box); return Math.hypot(x - cx, y - cy); });
  return distances.indexOf(Math.min(...distances));
}

async function identify() {
  try {
    const found = await api("/identify?top_k=3", { method: "POST", body: photoForm("image") });
    state.names = [];
    for (const face of found.faces) {
      state.names[nearestFace(face.box)] = `${face.name} (${face.similarity.toFixed(2)})`;
    }
    render();
    const known = found.faces.filter((f) => f.name !== "unknown").map((f) => f.name);
    status(known.length ? `Found: ${known.join(", ")}.` : "Nobody in the gallery matches.");
  } catch (error) {
    status(error.message, true);
  }
}

async function remove(name) {
  try {
    await api(`/gallery/${encodeURIComponent(name)}`, { method: "DELETE", headers: keyHeaders() });
    status(`Removed ${name}.`);
    await listPeople();
  } catch (error) {
    status(error.message, true);
  }
}

async function listPeople() {
  try {
    const { people } = await api("/gallery");
    $("people").replaceChildren(...people.map(({ name, count }) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "remove";
      button.addEventListener("click", () => remove(name));
      item.append(`${name} (${count})`, button);
      return item;
    }));
  } catch (error) {
    status(error.message, true);
  }
}

$("file").addEventListener("change", (event) => choose(event.target.files[0]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
$("enroll-form").addEventListener("submit", enroll);
$("identify").addEventListener("click", identify);
$("refresh").addEventListener("click", listPeople);
listPeople();
