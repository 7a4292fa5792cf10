// The drawing page: one request in flight at most; the newest drawing wins.
"use strict";
(() => {
  const pad = document.getElementById("pad");
  const ink = pad.getContext("2d");
  const seen = document.getElementById("seen").getContext("2d");
  const bars = document.getElementById("bars");
  const labelEl = document.getElementById("label");
  const confidenceEl = document.getElementById("confidence");
  const statusEl = document.getElementById("status");
  const modelEl = document.getElementById("model");
  const tokenRow = document.getElementById("token-row");
  const tokenInput = document.getElementById("token");
  let drawing = false, inFlight = false, pending = null, last = null, strokes = 0;

  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="digit">${d}</span><span class="bar"></span><span class="p"></span>`;
    bars.appendChild(li);
  }

  function clearPad() {
    ink.fillStyle = "#fff";
    ink.fillRect(0, 0, pad.width, pad.height);
    strokes = 0;
    labelEl.textContent = "–";
    confidenceEl.textContent = "";
    labelEl.dataset.label = "";
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  }

  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    pad.setPointerCapture(event.pointerId);
    last = point(event);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    ink.strokeStyle = "#111";
    ink.lineWidth = 18;
    ink.lineCap = "round";
    ink.lineJoin = "round";
    ink.beginPath();
    ink.moveTo(last[0], last[1]);
    ink.lineTo(next[0], next[1]);
    ink.stroke();
    last = next;
    strokes++;
    if (strokes % 4 === 0) send(pad);  // answer while drawing
  });
  const stop = () => { if (drawing) { drawing = false; send(pad); } };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);
  document.getElementById("clear").addEventListener("click", clearPad);

  function blobOf(source) {
    if (source instanceof Blob) return Promise.resolve(source);
    return new Promise((resolve) => source.toBlob(resolve, "image/png"));
  }

  // At most one request in flight: a newer drawing waits, and replaces any older waiting one.
  function send(source) {
    pending = source;
    if (!inFlight) next();
  }

  async function next() {
    if (pending === null) return;
    const source = pending;
    pending = null;
    inFlight = true;
    statusEl.textContent = "classifying…";
    statusEl.className = "";
    try {
      const body = await blobOf(source);
      const headers = { "content-type": body.type || "application/octet-stream" };
      if (tokenInput.value) headers.authorization = `Bearer ${tokenInput.value}`;
      const response = await fetch("/v1/classify?preprocessed=1", { method: "POST", body, headers });
      const answer = await response.json();
      if (response.status === 401) tokenRow.hidden = false;
      if (!response.ok) throw new Error(answer.error || response.statusText);
      show(answer);
      statusEl.textContent = "ready";
    } catch (error) {
      statusEl.textContent = error.message;
      statusEl.className = "error";
      labelEl.textContent = "?";
      labelEl.dataset.label = "";
    } finally {
      inFlight = false;
      if (pending !== null) next();
    }
  }

  function show(answer) {
    labelEl.textContent = String(answer.label);
    labelEl.dataset.label = String(answer.label);
    confidenceEl.textContent = `${(answer.confidence * 100).toFixed(1)}%`;
    modelEl.textContent = `${answer.model_name} v${answer.model_version}`;
    answer.probabilities.forEach((p, d) => {
      const li = bars.children[d];
      li.className = d === answer.label ? "top" : "";
      li.querySelector(".bar").style.width = `${Math.round(p * 200)}px`;
      li.querySelector(".p").textContent = p.toFixed(3);
    });
    const pixels = answer.preprocessed;
    const image = seen.createImageData(28, 28);
    for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
      const v = pixels[y][x], i = (y * 28 + x) * 4;
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
    createImageBitmap(image).then((bitmap) => {
      seen.imageSmoothingEnabled = false;
      seen.drawImage(bitmap, 0, 0, 112, 112);
    });
  }

  function takeFile(file) {
    if (file && file.type.startsWith("image/")) send(file);
  }
  document.getElementById("file").addEventListener("change", (event) => takeFile(event.target.files[0]));
  pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("drop"); });
  pad.addEventListener("dragleave", () => pad.classList.remove("drop"));
  pad.addEventListener("drop", (event) => {
    event.preventDefault();
    pad.classList.remove("drop");
    takeFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) takeFile(item.getAsFile());
  });

  clearPad();
})();
