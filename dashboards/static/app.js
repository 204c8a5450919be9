// carpulse dashboards: live updates over server-sent events and small form helpers (no inline script).
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel) => document.querySelector(sel);
  const fmtTime = (us) => (us ? new Date(Number(us) / 1000).toLocaleString() : "—");
  // the page's words in the staff language (<html lang>, dashboards/staff_text.py); English else
  const ZH = document.documentElement.lang === "zh-CN";
  const W = (en, zh) => (ZH ? zh : en);
  const num = (v, digits, unit) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits) + unit);

  function beep() {
    // A crash alert must be heard: a short two-tone beep made here (no audio file to fetch).
    try {
      const ctx = new (window.AudioContext || window.webkitAudioContext)();
      [880, 660].forEach((f, i) => {
        const o = ctx.createOscillator();
        o.frequency.value = f;
        o.connect(ctx.destination);
        o.start(ctx.currentTime + i * 0.25);
        o.stop(ctx.currentTime + i * 0.25 + 0.2);
      });
    } catch (e) { /* no audio device: the red banner still shows */ }
  }

  function setText(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }

  function showState(s) {
    setText("v-speed", num(s.speed_kmh, 0, " km/h"));
    setText("v-ignition", s.ignition === true ? "on" : s.ignition === false ? "off" : "—");
    setText("v-energy", s.fuel_pct != null ? num(s.fuel_pct, 0, " % fuel") : s.soc_pct != null ? num(s.soc_pct, 0, " % SoC") : "—");
    setText("v-odometer", num(s.odometer_km, 1, " km"));
    const h = document.getElementById("v-health");
    if (h) { h.textContent = s.health || "—"; h.className = "health-" + (s.health || "unknown"); }
    setText("v-seen", fmtTime(s.last_seen_us));
    const ul = document.getElementById("v-dtcs");
    if (ul) {
      ul.replaceChildren();
      (s.dtcs || []).forEach((d) => {
        const li = document.createElement("li");
        const b = document.createElement("b");
        b.textContent = d.code;
        li.append(b, " " + d.text);
        ul.append(li);
      });
      if (!ul.children.length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = W("none", "无"); ul.append(li); }
    }
    const loc = document.getElementById("v-location");
    if (loc) loc.textContent = s.location ? Number(s.location.lat).toFixed(5) + ", " + Number(s.location.lon).toFixed(5) : W("hidden", "已隐藏");
  }

  function showAlert(a) {
    const box = $("#alerts");
    if (!box) return;
    if (a.kind === "silent_end") {  // the silent car reports again: its banner goes
      box.querySelectorAll("div.alert.silent").forEach((d) => { if (d.dataset.vin === a.vin) d.remove(); });
      return;
    }
    const div = document.createElement("div");
    div.className = "alert " + (a.kind === "silent" ? "silent" : "crash");
    div.dataset.vin = a.vin;
    const link = document.createElement("a");
    link.href = "/console/vehicles/" + encodeURIComponent(a.vin);
    link.textContent = a.vin;
    div.append(a.kind === "silent" ? W("SILENT CAR", "车辆失联") + " · " : W("CRASH", "碰撞") + " · ", link, " · " + fmtTime(a.ts_us));
    box.prepend(div);
    beep();
  }

  function connect() {
    const host = document.querySelector("[data-events]");
    if (!host || !window.EventSource) return;
    const es = new EventSource(host.dataset.events);
    // the stream's state on the page, for people and for tests (no eval needed to wait on it)
    es.addEventListener("open", () => { host.dataset.live = "open"; });
    es.addEventListener("error", () => { host.dataset.live = es.readyState === 2 ? "closed" : "reconnecting"; });
    es.addEventListener("state", (e) => showState(JSON.parse(e.data)));
    es.addEventListener("alert", (e) => showAlert(JSON.parse(e.data)));
    // the server ended the stream: the session is no longer valid (logged out, deactivated...)
    es.addEventListener("end", () => { es.close(); host.dataset.live = "closed"; window.location.assign("/login"); });
    window.carpulseEvents = es;
  }

  async function pollAck(id, out) {
    for (let i = 0; i < 60; i++) {
      const r = await fetch("/console/commands/" + id, { headers: { Accept: "application/json" } });
      const j = await r.json();
      if (j.status !== "pending") {
        out.textContent = W("Car answered: ", "车辆回复：") + j.status + " (" + j.reason + ")";
        out.dataset.status = j.status;
        return;
      }
      await new Promise((res) => setTimeout(res, 500));
    }
    out.textContent = W("No answer from the car yet (it may be offline).", "车辆尚未回复（可能离线）。");
  }

  document.addEventListener("submit", async (e) => {
    const form = e.target;
    if (!form.classList.contains("js-post")) return;
    e.preventDefault();
    const out = $(form.dataset.result);
    const body = new FormData(form, e.submitter);
    out.textContent = "…";
    delete out.dataset.status;
    const r = await fetch(form.action, { method: "POST", body, headers: { "X-CSRF-Token": csrf(), Accept: "application/json" } });
    let j = {};
    try { j = await r.json(); } catch (err) { /* not JSON */ }
    if (!r.ok) { out.textContent = W("Refused: ", "已拒绝：") + (j.detail && j.detail.toString ? j.detail.toString() : r.status); out.dataset.status = "error"; return; }
    if (form.id === "reveal-form") {
      setText("v-location", j.location ? Number(j.location.lat).toFixed(5) + ", " + Number(j.location.lon).toFixed(5) : W("no position known", "无位置信息"));
      out.textContent = W("Location revealed for " + Math.round(j.seconds / 60) + " min (audited).",
                        "位置显示 " + Math.round(j.seconds / 60) + " 分钟（已记录审计）。");
      out.dataset.status = "ok";
      return;
    }
    out.textContent = W("Sent, command " + j.id + "; waiting for the car…", "已发送指令 " + j.id + "，等待车辆回复…");
    out.dataset.command = j.id;
    if (form.dataset.ack) pollAck(j.id, out);
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-us]").forEach((el) => { if (el.dataset.us) el.textContent = fmtTime(el.dataset.us); });
    connect();
  });
})();
