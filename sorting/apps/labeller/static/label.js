// The labeller's page: a photo's boxes drawn over it in photo pixels (the SVG's viewBox is the photo's size), changed
// by the mouse and keys, and sent back whole to the server after each change (PUT /api/boxes/<index>).
"use strict";

(() => {
  const body = document.body;
  const index = Number(body.dataset.index);
  const count = Number(body.dataset.count);
  const token = body.dataset.token;
  const svg = document.getElementById("boxes");
  const status = document.getElementById("status");
  const NS = "http://www.w3.org/2000/svg";
  const MIN_SIDE = 4; // photo px: a smaller drag is a click, not a box
  const KEYS = {g: "garment", h: "hand", o: "object"};

  let boxes = []; // [{box: [x0, y0, x1, y1], kind}]
  let chosen = -1;
  let kind = sessionStorage.getItem("labeller-kind") || "garment";
  let drag = null; // {x, y, rect} while a box is being drawn
  let resize = null; // {edges: {left, right, top, bottom}} while the chosen box's edges are dragged
  const GRIP = 8; // screen px from an edge of the chosen box that grab the edge
  let saving = Promise.resolve();
  let sends = 0; // saves sent: only the last one's answer replaces the boxes shown (a later change is newer)
  const undo = []; // the boxes before each change on this page, newest last

  function say(text, error = false) {
    status.textContent = text;
    status.classList.toggle("error", error);
  }

  function point(event) {
    const p = svg.createSVGPoint();
    p.x = event.clientX;
    p.y = event.clientY;
    return p.matrixTransform(svg.getScreenCTM().inverse());
  }

  function setKind(k) {
    kind = k;
    sessionStorage.setItem("labeller-kind", k);
    document.querySelectorAll("button.kind").forEach((b) => b.classList.toggle("chosen", b.dataset.kind === k));
  }

  function draw() {
    svg.replaceChildren();
    boxes.forEach((item, i) => {
      const [x0, y0, x1, y1] = item.box;
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("x", x0);
      rect.setAttribute("y", y0);
      rect.setAttribute("width", x1 - x0);
      rect.setAttribute("height", y1 - y0);
      rect.setAttribute("class", item.kind + (i === chosen ? " chosen" : ""));
      rect.dataset.i = i;
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", x0 + 4);
      label.setAttribute("y", y0 + 20);
      label.textContent = `${i + 1} ${item.kind}`;
      svg.append(rect, label);
    });
  }

  function before() {
    // call before each change: Ctrl+Z (or the undo button) brings these boxes back
    undo.push(boxes.map((item) => ({box: [...item.box], kind: item.kind})));
  }

  function back() {
    if (!undo.length) return;
    boxes = undo.pop();
    chosen = -1;
    draw();
    save();
  }

  function save() {
    const sent = boxes.map((item) => ({box: [...item.box], kind: item.kind}));
    const mine = ++sends;
    say("saving…");
    saving = saving.then(() => fetch(`/api/boxes/${index}`, {
      method: "PUT",
      headers: {"Content-Type": "application/json", "X-Labeller-Token": token},
      body: JSON.stringify({boxes: sent}),
    }).then(async (response) => {
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        say(`not saved: ${answer.error || response.status}`, true);
        return;
      }
      if (mine !== sends) return;
      boxes = answer.boxes; // as the file has them: clipped to the photo
      draw();
      say(`saved: ${boxes.length} box${boxes.length === 1 ? "" : "es"}`);
    }).catch((err) => say(`not saved: ${err}`, true)));
    return saving;
  }

  function choose(i) {
    chosen = i;
    if (i >= 0) setKind(boxes[i].kind);
    draw();
  }

  function go(to) {
    if (to < 0 || to >= count) return;
    saving.then(() => { window.location.href = `/photo/${to}`; });
  }

  function edgesNear(p) {
    // the edges of the chosen box within GRIP screen px of p (photo px), or null
    if (chosen < 0) return null;
    const grip = GRIP / svg.getScreenCTM().a;
    const [x0, y0, x1, y1] = boxes[chosen].box;
    const inX = p.x > x0 - grip && p.x < x1 + grip;
    const inY = p.y > y0 - grip && p.y < y1 + grip;
    const edges = {
      left: inY && Math.abs(p.x - x0) < grip, right: inY && Math.abs(p.x - x1) < grip,
      top: inX && Math.abs(p.y - y0) < grip, bottom: inX && Math.abs(p.y - y1) < grip,
    };
    return Object.values(edges).some(Boolean) ? edges : null;
  }

  svg.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    const edges = edgesNear(point(event));
    if (edges) {
      before();
      resize = {edges};
      svg.setPointerCapture(event.pointerId);
      return;
    }
    if (event.target.tagName === "rect" && event.target.dataset.i !== undefined) {
      choose(Number(event.target.dataset.i));
      return;
    }
    const p = point(event);
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("class", "drawing");
    svg.append(rect);
    drag = {x: p.x, y: p.y, rect};
    svg.setPointerCapture(event.pointerId);
  });

  svg.addEventListener("pointermove", (event) => {
    const p = point(event);
    if (resize) {
      const box = boxes[chosen].box;
      if (resize.edges.left) box[0] = Math.round(p.x);
      if (resize.edges.right) box[2] = Math.round(p.x);
      if (resize.edges.top) box[1] = Math.round(p.y);
      if (resize.edges.bottom) box[3] = Math.round(p.y);
      draw();
      return;
    }
    svg.classList.toggle("grip", Boolean(edgesNear(p)));
    if (!drag) return;
    drag.rect.setAttribute("x", Math.min(p.x, drag.x));
    drag.rect.setAttribute("y", Math.min(p.y, drag.y));
    drag.rect.setAttribute("width", Math.abs(p.x - drag.x));
    drag.rect.setAttribute("height", Math.abs(p.y - drag.y));
  });

  svg.addEventListener("pointerup", (event) => {
    if (resize) {
      const [x0, y0, x1, y1] = boxes[chosen].box; // an edge dragged past its opposite one turns the box over
      boxes[chosen].box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
      resize = null;
      draw();
      save();
      return;
    }
    if (!drag) return;
    const p = point(event);
    const box = [Math.min(p.x, drag.x), Math.min(p.y, drag.y), Math.max(p.x, drag.x), Math.max(p.y, drag.y)]
      .map((v) => Math.round(v));
    drag.rect.remove();
    drag = null;
    if (box[2] - box[0] < MIN_SIDE || box[3] - box[1] < MIN_SIDE) {
      choose(-1);
      return;
    }
    before();
    boxes.push({box, kind});
    chosen = boxes.length - 1;
    draw();
    save();
  });

  document.querySelectorAll("button.kind").forEach((button) => button.addEventListener("click", () => {
    setKind(button.dataset.kind);
    if (chosen >= 0 && boxes[chosen].kind !== kind) {
      before();
      boxes[chosen].kind = kind;
      draw();
      save();
    }
  }));

  function remove() {
    if (chosen < 0) return;
    before();
    boxes.splice(chosen, 1);
    chosen = -1;
    draw();
    save();
  }
  document.getElementById("delete").addEventListener("click", remove);
  document.getElementById("undo").addEventListener("click", back);

  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "z") {
      event.preventDefault();
      back();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (KEYS[event.key]) {
      document.querySelector(`button.kind[data-kind="${KEYS[event.key]}"]`).click();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      remove();
    } else if (event.key === "Escape") {
      choose(-1);
    } else if (event.key === "ArrowRight") {
      go(index + 1);
    } else if (event.key === "ArrowLeft") {
      go(index - 1);
    }
  });
  document.getElementById("prev").addEventListener("click", (e) => { e.preventDefault(); go(index - 1); });
  document.getElementById("next").addEventListener("click", (e) => { e.preventDefault(); go(index + 1); });

  setKind(kind);
  fetch(`/api/boxes/${index}`).then(async (response) => {
    const answer = await response.json();
    if (!response.ok) {
      say(answer.error || `cannot load the boxes (${response.status})`, true);
      return;
    }
    svg.setAttribute("viewBox", `0 0 ${answer.size[0]} ${answer.size[1]}`);
    boxes = answer.boxes;
    draw();
    say(`${boxes.length} box${boxes.length === 1 ? "" : "es"}`);
  }).catch((err) => say(`cannot load the boxes: ${err}`, true));
})();
