// textile-sorter operator's console: plain JavaScript, no framework, no network beyond this server.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf"]').content;

async function post(url, body) {
  const resp = await fetch(url, {
    method: "POST", body: body || new FormData(),
    headers: { "X-CSRF-Token": csrf(), "Accept": "application/json" },
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((item) => {
    const tr = el("tr");
    cells(item).forEach(([text, cls]) => tr.appendChild(el("td", text, cls)));
    return tr;
  }));
}

const pct = (v) => (v === null || v === undefined) ? "–" : `${(100 * v).toFixed(1)} %`;
const num = (v, d = 1) => (v === null || v === undefined) ? "–" : Number(v).toFixed(d);

function setLink(ok, text) {
  const node = document.getElementById("link-state");
  node.textContent = ok ? text : "console link lost: retrying";
  node.className = ok ? "link-state" : "link-state lost";
}

// ---------------------------------------------------------------------------- Live page
function renderBanners(snap) {
  const box = document.getElementById("banners");
  const keep = document.getElementById("no-line");
  const out = keep ? [keep] : [];
  const add = (cls, text) => out.push(el("p", text, `banner ${cls}`));
  (snap.health || []).filter((l) => l.state === "bad").forEach((l) => add("bad", `${l.label}: ${l.text}`));
  if (snap.log.state === "busy") add("warn", "Decision log busy: showing the last figures read.");
  if (snap.log.state === "missing") add("warn", "The decision log has not been created yet.");
  box.replaceChildren(...out);
}

let alarmsShown = null;

function renderAlarms(alarms) {
  const list = document.getElementById("alarms");
  if (!list) return;
  // rebuild only on a change: a button replaced under the pointer would swallow the operator's click
  const shown = JSON.stringify(alarms.map((a) => [a.key, a.message, a.state, a.count, a.last]));
  if (shown === alarmsShown) return;
  alarmsShown = shown;
  if (!alarms.length) { list.replaceChildren(el("li", "No alarms.", "none")); return; }
  list.replaceChildren(...alarms.map((a) => {
    const li = el("li", null, `${a.severity}${a.active ? " active" : ""}`);
    li.dataset.key = a.key;
    const text = el("span", null, "text");
    text.append(el("b", a.title), ` ${a.message} (${a.state}, ×${a.count}, since ${a.first}, last ${a.last})`);
    li.appendChild(text);
    if (!a.acknowledged) {
      const btn = el("button", "Acknowledge", "small ack");
      btn.type = "button";
      btn.addEventListener("click", () => post(`/api/alarms/${encodeURIComponent(a.key)}/ack`).then(refreshLive));
      li.appendChild(btn);
    }
    return li;
  }));
}

function renderModel(model) {
  const box = document.getElementById("model");
  if (!box || !model) return;
  const info = model.info;
  if (info) {
    const head = el("p"); head.append(el("b", info.name), ` ${info.model_id}`);
    const classes = Object.entries(info.classes).map(([h, v]) => `${h}: ${v.length} classes`).join(", ");
    box.replaceChildren(head, el("p", `${info.path} · loaded ${info.loaded} · run ${info.run_id || "–"} · ` +
      `exported ${info.exported_at || "–"} · ${classes}${info.quantized ? " · INT8" : ""}`, "muted"));
  }
  const events = document.getElementById("model-events");
  events.replaceChildren(...model.events.map((e) =>
    el("li", `${e.time} ${e.model_id || e.path} ${e.message}`, e.ok ? "ok" : "bad")));
}

function renderLive(snap) {
  const c = snap.counts;
  rows(document.getElementById("bins"), c.per_bin, (b) => [[b.name], [b.n, "num"], [c.total ? pct(b.n / c.total) : "–", "num"]]);
  document.getElementById("total").textContent = c.total;
  document.getElementById("reject-rate").textContent = pct(c.reject_rate);
  rows(document.getElementById("reasons"), c.reject_by_reason, (r) => [[r.reason], [r.n, "num"], [pct(r.rate), "num"]]);
  rows(document.getElementById("recent"), snap.recent, (r) => [[r.time.slice(11)], [r.item], [r.bin], [r.reason], [r.fibre], [r.colour]]);
  document.getElementById("session").textContent = snap.session || "";
  renderBanners(snap);
  if (!snap.attached) return;
  document.getElementById("items-per-min").textContent = num(snap.rates.items_per_min, 0);
  document.getElementById("fps").textContent = num(snap.rates.fps);
  document.getElementById("latency").textContent = `${num(snap.rates.latency_ms_p50)} / ${num(snap.rates.latency_ms_p99)} ms`;
  document.getElementById("lights").replaceChildren(...snap.health.map((l) => {
    const li = el("li", null, l.state); li.dataset.key = l.key; li.append(el("b", l.label), ` ${l.text}`); return li;
  }));
  renderAlarms(snap.alarms);
  renderModel(snap.model);
}

async function refreshLive() {
  try {
    const resp = await fetch("/api/live", { headers: { "Accept": "application/json" } });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const snap = await resp.json();
    renderLive(snap);
    setLink(true, `updated ${snap.now}`);
  } catch (err) {
    setLink(false);
  }
}

async function frameLoop() {
  const img = document.getElementById("frame");
  const count = document.getElementById("frame-count");
  const caption = document.getElementById("frame-caption");
  let seq = 0, shown = 0, lastUrl = null, lastAt = Date.now();
  for (;;) {
    try {
      const resp = await fetch(`/frame.jpg?after=${seq}`);
      if (resp.status === 200) {
        seq = Number(resp.headers.get("X-Frame-Seq")) || seq + 1;
        const url = URL.createObjectURL(await resp.blob());
        const loaded = await new Promise((done) => {
          img.onload = () => done(true); img.onerror = () => done(false); img.src = url;
        });
        if (lastUrl) URL.revokeObjectURL(lastUrl);
        lastUrl = url;
        if (loaded) {
          lastAt = Date.now(); shown += 1;
          count.textContent = shown; count.dataset.n = shown;
          caption.textContent = `frame ${seq}`;
        }
      } else if (resp.status === 204) {
        caption.textContent = `no new camera frame for ${Math.round((Date.now() - lastAt) / 1000)} s`;
      } else {
        throw new Error(`HTTP ${resp.status}`);
      }
    } catch (err) {
      caption.textContent = "camera view unavailable: retrying";
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
}

function initLive() {
  refreshLive();
  setInterval(refreshLive, 1000);
  if (document.getElementById("frame")) frameLoop();
  const ackAll = document.getElementById("ack-all");
  if (ackAll) ackAll.addEventListener("click", () => post("/api/alarms/ack-all").then(refreshLive));
}

// ---------------------------------------------------------------------------- Relabel page
function initRelabel() {
  const cards = () => Array.from(document.querySelectorAll("form.card"));
  let active = 0;
  const focus = (i) => {
    const list = cards();
    if (!list.length) return;
    active = Math.max(0, Math.min(i, list.length - 1));
    list.forEach((c, k) => c.classList.toggle("active", k === active));
    list[active].focus({ preventScroll: false });
  };
  const nextOpen = () => {
    const list = cards();
    const k = list.findIndex((c, i) => i > active && !c.classList.contains("done") && !c.classList.contains("skipped"));
    if (k >= 0) focus(k); else if (list.every((c) => c.classList.contains("done") || c.classList.contains("skipped"))) location.reload();
  };
  async function submit(card, action) {
    const data = new FormData(card);
    data.set("action", action);
    const state = card.querySelector(".state");
    try {
      const res = await post(card.getAttribute("action"), data);  // card.action would be the buttons named "action"
      card.classList.remove("done", "skipped");
      card.classList.add(action === "skip" ? "skipped" : "done");
      state.textContent = action === "skip" ? "skipped" : "saved";
      ["labelled", "skipped", "left"].forEach((k) => { document.getElementById(k).textContent = res.progress[k]; });
      nextOpen();
    } catch (err) {
      state.textContent = `not saved: ${err.message}`;
    }
  }
  cards().forEach((card, i) => {
    card.addEventListener("submit", (ev) => { ev.preventDefault(); submit(card, ev.submitter ? ev.submitter.value : "save"); });
    card.addEventListener("click", () => { active = i; cards().forEach((c, k) => c.classList.toggle("active", k === i)); });
  });
  document.addEventListener("keydown", (ev) => {
    const card = cards()[active];
    if (!card) return;
    const inSelect = ev.target.tagName === "SELECT";
    if (inSelect && ev.key !== "Enter" && ev.key !== "Escape") return;
    const setLayout = (v) => { card.querySelector(`input[name="layout"][value="${v}"]`).checked = true; };
    const keys = {
      ArrowRight: () => focus(active + 1), j: () => focus(active + 1),
      ArrowLeft: () => focus(active - 1), k: () => focus(active - 1),
      f: () => card.querySelector('select[name="fibre"]').focus(),
      c: () => card.querySelector('select[name="colour"]').focus(),
      "1": () => setLayout("single"), "2": () => setLayout("several"),
      Enter: () => submit(card, "save"), x: () => submit(card, "skip"),
      Escape: () => card.focus(),
    };
    if (keys[ev.key] && !(ev.target.tagName === "BUTTON" && ev.key === "Enter")) { ev.preventDefault(); keys[ev.key](); }
  });
  focus(0);
}

// ---------------------------------------------------------------------------- all pages
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".autosubmit").forEach((node) => node.addEventListener("change", () => node.form.submit()));
  const page = document.body.dataset.page;
  if (page === "live") initLive();
  if (page === "relabel") initRelabel();
  if (page === "message") setTimeout(() => location.reload(), 2000);
});
