/* culturectl dashboard: one SSE connection per tab (htmx-ext-sse on <body>), fanned out to the page's parts.
 * Actions go to the JSON API with the session cookie; the API's problem JSON is shown next to the field. */
(function () {
  "use strict";
  var body = document.body;
  var cc = (window.culturectl = window.culturectl || {});
  cc.charts = {};
  var KINDS = ["reading", "device_state", "step", "deviation", "run", "setpoint", "alarm"];
  var MAX_POINTS = 2000; // never more than this many points per series in the browser
  var TARGET_POINTS = 1800; // history per view: room left for gap markers and live points under MAX_POINTS
  var BUCKETS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

  // ---- the scaled clock: clock_now = server_now + (Date.now() - loaded_at) * scale ------------------------
  var serverNow = Date.parse(body.dataset.clockNow || new Date().toISOString());
  var scale = parseFloat(body.dataset.clockScale || "1") || 1;
  var loadedAt = Date.now();
  function clockNow() { return serverNow + (Date.now() - loadedAt) * scale; } // epoch ms, clock time
  cc.clockNow = clockNow;

  // ---- a wall screen stays signed in: renew the session at a third of the token's life, up to the server's
  // longest session (CULTURECTL_SESSION_MAX_HOURS); when the server refuses, the next request goes to the login.
  var ttl = parseFloat(body.dataset.sessionTtl || "0");
  if (ttl > 0) {
    cc.renewals = 0;
    setInterval(function () {
      fetch("/api/v1/auth/refresh", {method: "POST", credentials: "same-origin"}).then(function (r) {
        if (r.ok) { cc.renewals += 1; } else if (r.status === 401) { toLogin(); }
      }).catch(function () { /* offline: the next interval tries again */ });
    }, Math.max(5, ttl / 3) * 1000);
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtUtc(ms, secs) {
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + (secs ? ":" + pad(d.getUTCSeconds()) : "") + " UTC";
  }
  function fmtDuration(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + " d " + h + " h " + pad(m) + " min";
    if (h > 0) return h + " h " + pad(m) + " min";
    return m + " min " + pad(s % 60) + " s";
  }
  function fmtNum(v, digits) { // `digits` significant digits (4; the server's `num` filter shows 3)
    if (v === null || v === undefined) return "—";
    var a = Math.abs(v);
    return (a !== 0 && (a >= 1e5 || a < 1e-3)) ? v.toExponential(2).replace("e+", "e") : String(+v.toPrecision(digits || 4));
  }
  cc.fmt = { utc: fmtUtc, num: fmtNum, duration: fmtDuration };
  function tick() {
    var now = clockNow();
    var el = document.getElementById("clock");
    if (el) el.textContent = fmtUtc(now, true);
    document.querySelectorAll("[data-testid=countdown][data-until]").forEach(function (c) {
      var until = c.dataset.until ? Date.parse(c.dataset.until) : NaN;
      if (isNaN(until)) return;
      var left = until - now;
      c.textContent = left >= 0 ? c.dataset.label + " " + fmtDuration(left) : c.dataset.label + " (passed " + fmtDuration(-left) + " ago)";
    });
    // Same rule as the server's views.run_day: day 1 is the first 24 h after T0 (seeding).
    document.querySelectorAll("[data-testid=run-day][data-t0]").forEach(function (d) {
      var t0 = d.dataset.t0 ? Date.parse(d.dataset.t0) : NaN;
      if (isNaN(t0) || d.dataset.runStatus === "planned" || now < t0) return;
      var text = "Day " + (Math.floor((now - t0) / 86400000) + 1) + " of 7";
      if (d.textContent !== text) d.textContent = text;
    });
    document.querySelectorAll("[data-testid=timeline][data-start]").forEach(function (t) {
      var s = Date.parse(t.dataset.start), e = Date.parse(t.dataset.end);
      if (isNaN(s) || isNaN(e) || e <= s) return;
      var pct = Math.max(0, Math.min(100, (now - s) / (e - s) * 100));
      t.querySelectorAll(".now").forEach(function (n) { n.style.left = pct + "%"; });
    });
  }
  setInterval(tick, 250);
  // Timeline bars carry their place in data-left / data-width (percent): the CSP allows no style= attribute,
  // styles set here (the CSSOM) are allowed. Called for the page and for each re-fetched part.
  function placeBars(root) {
    root.querySelectorAll(".track [data-left]").forEach(function (b) {
      b.style.left = b.dataset.left + "%";
      if (b.dataset.width !== undefined) b.style.width = b.dataset.width + "%";
    });
  }
  placeBars(document);
  tick();

  // ---- JSON API calls with the session cookie; problem JSON back ----------------------------------------
  function api(method, url, payload) {
    return fetch(url, {
      method: method, credentials: "same-origin",
      headers: payload === undefined ? {} : { "Content-Type": "application/json" },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    }).then(function (r) {
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = { detail: t }; }
        return { ok: r.ok, status: r.status, data: data };
      });
    });
  }
  cc.api = api;

  function toLogin() {
    if (cc.lock && cc.lock.active) return; // the locked screen asks for the password (session.js)
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }
  cc.toLogin = toLogin;

  // ---- login / logout --------------------------------------------------------------------------------------
  var loginForm = document.getElementById("login");
  if (loginForm) {
    loginForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var err = document.getElementById("login-error");
      err.textContent = "";
      var btn = loginForm.querySelector("button[type=submit]");
      btn.disabled = true;
      api("POST", "/api/v1/auth/login", {
        username: loginForm.elements.username.value, password: loginForm.elements.password.value,
      }).then(function (res) {
        btn.disabled = false;
        if (res.ok) {
          var next = loginForm.dataset.next || "/";
          next = (next.charAt(0) === "/" && next.charAt(1) !== "/") ? next : "/";
          if (res.data && res.data.password_expired && cc.passwordChange) {  // a new password first (session.js)
            cc.passwordChange(loginForm.elements.password.value, next);
            return;
          }
          location.href = next;
        } else {
          err.textContent = (res.data && res.data.detail) || ("login failed (" + res.status + ")");
          loginForm.elements.password.select();
        }
      }, function () { btn.disabled = false; err.textContent = "the service cannot be reached"; });
    });
    // The login page never becomes "ready": a page is ready with its data and its stream, after the login.
    body.dataset.login = "true";
  }
  var logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", function () {
      api("POST", "/api/v1/auth/logout").then(function () { location.href = "/login"; },
        function () { location.href = "/login"; });
    });
  }

  // ---- live stream: one EventSource (htmx-ext-sse's), fanned out --------------------------------------------
  var handlers = {};
  function on(kind, fn) { (handlers[kind] = handlers[kind] || []).push(fn); }
  cc.on = on;
  var live = document.getElementById("live");
  var sseOpen = false;
  var pending = []; // what must finish before the page is ready
  function setLive(state, text) { if (live) { live.dataset.state = state; live.textContent = text; } }
  function checkReady() {
    if (!sseOpen || body.dataset.ready === "true") return;
    Promise.all(pending.map(function (p) { return p.catch(function () {}); })).then(function () { body.dataset.ready = "true"; });
  }
  // A stream the extension has to open anew (after the old one was closed) resumes after the last event seen;
  // while a stream lives, the browser reconnects by itself with Last-Event-ID.
  var lastEventId = null;
  if (window.htmx) {
    htmx.createEventSource = function (url) {
      if (lastEventId) url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(lastEventId);
      return new EventSource(url, { withCredentials: true });
    };
  }
  body.addEventListener("htmx:sseOpen", function (ev) {
    var src = ev.detail && ev.detail.source;
    if (src && !src.__culturectl) {
      src.__culturectl = true;
      KINDS.forEach(function (kind) {
        src.addEventListener(kind, function (e) {
          var data;
          if (e.lastEventId) lastEventId = e.lastEventId;
          try { data = JSON.parse(e.data); } catch (x) { return; }
          (handlers[kind] || []).forEach(function (fn) { fn(data, e); });
        });
      });
    }
    sseOpen = true;
    setLive("open", "● live");
    checkReady();
  });
  body.addEventListener("htmx:sseError", function () {
    setLive("error", "○ reconnecting…");
    // An expired or ended session: the stream is refused; go to the login page.
    api("GET", "/api/v1/auth/me").then(function (r) { if (r.status === 401) toLogin(); }, function () {});
  });

  // Parts re-fetched on events: data-src + data-refresh-on="kind,kind". Debounced, trailing, one at a time.
  // Each fetch has a deadline; a failed or late one is retried (a part must never stay stale after a change).
  var REFRESH_TIMEOUT_MS = 10000, REFRESH_RETRY_MS = 1000;
  function refresher(el) {
    var timer = null, busy = false, again = false;
    function run() {
      if (busy) { again = true; return; }
      busy = true;
      var ctl = new AbortController();
      var late = setTimeout(function () { ctl.abort(); }, REFRESH_TIMEOUT_MS);
      fetch(el.dataset.src, { credentials: "same-origin", signal: ctl.signal }).then(function (r) {
        if (r.status === 401) { toLogin(); return null; }
        if (!r.ok) throw new Error("refresh failed (" + r.status + ")");
        return r.text();
      }).then(function (html) {
        if (html === null) return;
        el.innerHTML = html;
        placeBars(el);
        htmx.process(el);
        done(true);
      }, function () { done(false); }).finally(function () { clearTimeout(late); });
    }
    function done(ok) {
      busy = false;
      if (!ok) { again = false; clearTimeout(timer); timer = setTimeout(run, REFRESH_RETRY_MS); return; }
      if (again) { again = false; schedule(); }
    }
    function schedule() { clearTimeout(timer); timer = setTimeout(run, 150); }
    el.__refresh = schedule;
    return schedule;
  }
  document.querySelectorAll("[data-refresh-on]").forEach(function (el) {
    var fn = refresher(el);
    el.dataset.refreshOn.split(",").forEach(function (kind) {
      on(kind.trim(), function (data) {
        var runId = body.dataset.runId;
        if (runId && data && data.run_id !== undefined && String(data.run_id) !== runId && kind !== "alarm") return;
        fn();
      });
    });
  });
  function refreshAll(selector) {
    document.querySelectorAll(selector).forEach(function (el) { if (el.__refresh) el.__refresh(); });
  }
  on("device_state", function (d) {
    document.querySelectorAll("[data-testid=device-state]").forEach(function (el) {
      if (el.dataset.device === d.device) { el.textContent = d.state; el.className = "dev-state state-" + d.state; }
    });
  });

  // ---- alarm actions: acknowledge / shelve / unshelve with a comment ----------------------------------------
  var cdlg = document.getElementById("comment-dialog");
  var cAction = null, cAlarm = null;
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest && ev.target.closest("button[data-action][data-alarm-id]");
    if (!b || !cdlg) return;
    cAction = b.dataset.action; cAlarm = b.dataset.alarmId;
    document.getElementById("comment-title").textContent =
      { acknowledge: "Acknowledge alarm", shelve: "Shelve alarm", unshelve: "Unshelve alarm" }[cAction] || cAction;
    document.getElementById("comment-alarm").textContent = cAlarm;
    document.getElementById("comment-error").textContent = "";
    var minutesRow = document.getElementById("comment-minutes-row");
    minutesRow.hidden = cAction !== "shelve";
    document.getElementById("comment-minutes").disabled = cAction !== "shelve";
    document.getElementById("comment-text").value = "";
    cdlg.showModal();
    document.getElementById("comment-text").focus();
  });
  if (cdlg) {
    document.getElementById("comment-cancel").addEventListener("click", function () { cdlg.close(); });
    document.getElementById("comment-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var payload = { comment: document.getElementById("comment-text").value };
      if (cAction === "shelve") payload.minutes = parseFloat(document.getElementById("comment-minutes").value);
      var btn = document.getElementById("comment-confirm");
      btn.disabled = true;
      api("POST", "/api/v1/alarms/" + encodeURIComponent(cAlarm) + "/" + cAction, payload).then(function (res) {
        btn.disabled = false;
        if (res.ok) { cdlg.close(); refreshAll("[data-refresh-on*=alarm]"); return; }
        if (res.status === 401) { toLogin(); return; }
        document.getElementById("comment-error").textContent = problemText(res);
      }, function () { btn.disabled = false; document.getElementById("comment-error").textContent = "the service cannot be reached"; });
    });
  }

  function problemText(res) {
    var d = res.data || {};
    var text = d.detail || ("request failed (" + res.status + ")");
    if (d.errors && d.errors.length && !d.errors[0].field) {
      text += ": " + d.errors.map(function (e) { return (e.loc ? e.loc.join(".") + " " : "") + (e.msg || e.detail || ""); }).join("; ");
    }
    return text;
  }

  // ---- alarms waiting for acknowledgement: the title counts them; the sound toggle beeps for high ones -------
  // The server renders the count and the waiting alarms (id -> priority); `alarm` events keep them current.
  var UNACK = { active_unack: true, returned_unack: true };
  var unack = null;
  var baseTitle = document.title.replace(/^\(\d+\) /, "");
  var SOUND_KEY = "culturectl.sound";
  var soundBtn = document.getElementById("sound-toggle");
  var soundOn = false;
  var audio = null; // the AudioContext: made (or resumed) on a user gesture, as browsers require
  var repeatTimer = null;
  var sound = (cc.sound = { repeatMs: 10000 }); // tests may shorten the repeat
  body.dataset.beeps = "0"; // tones played, for tests
  body.dataset.alarmTone = "idle"; // "repeating" while sound is on and a high-priority alarm waits

  function countTitle() {
    var n = Object.keys(unack).length;
    var title = (n ? "(" + n + ") " : "") + baseTitle;
    if (document.title !== title) document.title = title;
  }
  function highWaiting() {
    return Object.keys(unack).some(function (id) { return unack[id] === "high"; });
  }
  function audioContext() {
    if (!audio) {
      var AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      try { audio = new AC(); } catch (e) { return null; }
      audio.onstatechange = showSound;
    }
    if (audio.state === "suspended" && audio.resume) audio.resume().catch(function () {});
    return audio;
  }
  function tone() { // two notes, half a second, made by the Web Audio API: no file to ship
    var ctx = audioContext();
    if (!ctx) return;
    var t = ctx.currentTime, osc = ctx.createOscillator(), gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.setValueAtTime(880, t);
    osc.frequency.setValueAtTime(660, t + 0.25);
    gain.gain.setValueAtTime(0.0001, t);
    gain.gain.exponentialRampToValueAtTime(0.25, t + 0.02);
    gain.gain.setValueAtTime(0.25, t + 0.45);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.5);
    osc.connect(gain);
    gain.connect(ctx.destination);
    osc.start(t);
    osc.stop(t + 0.55);
    body.dataset.beeps = String((parseInt(body.dataset.beeps, 10) || 0) + 1);
  }
  function repeat() { // again every repeatMs while a high-priority alarm waits and sound is on
    var want = soundOn && unack !== null && highWaiting();
    body.dataset.alarmTone = want ? "repeating" : "idle";
    if (!want) { clearTimeout(repeatTimer); repeatTimer = null; return; }
    if (repeatTimer === null) {
      repeatTimer = setTimeout(function () { repeatTimer = null; if (soundOn && highWaiting()) tone(); repeat(); },
        sound.repeatMs);
    }
  }
  function showSound() {
    if (!soundBtn) return;
    soundBtn.setAttribute("aria-pressed", soundOn ? "true" : "false");
    var blocked = soundOn && (!audio || audio.state !== "running");
    soundBtn.querySelector(".sound-state").textContent = !soundOn ? "off" : blocked ? "on (click to allow)" : "on";
  }
  if (soundBtn) {
    try { soundOn = window.localStorage.getItem(SOUND_KEY) === "on"; } catch (e) { soundOn = false; }
    soundBtn.addEventListener("click", function () {
      soundOn = !soundOn;
      try { window.localStorage.setItem(SOUND_KEY, soundOn ? "on" : "off"); } catch (e) { /* not remembered */ }
      if (soundOn) audioContext(); // the click is the gesture that lets the page play sound
      showSound();
      repeat();
    });
    if (soundOn) { // remembered from an earlier visit: the browser still wants a gesture on this page
      audioContext();
      var unlock = function () {
        if (soundOn) audioContext();
        document.removeEventListener("pointerdown", unlock, true);
        document.removeEventListener("keydown", unlock, true);
      };
      document.addEventListener("pointerdown", unlock, true);
      document.addEventListener("keydown", unlock, true);
    }
    showSound();
  }
  if (body.dataset.alarmsUnack) {
    try { unack = JSON.parse(body.dataset.alarmsUnack) || {}; } catch (e) { unack = {}; }
    on("alarm", function (a) {
      if (!a || !a.id) return;
      if (UNACK[a.status]) unack[a.id] = a.priority; else delete unack[a.id];
      countTitle();
      if (soundOn && a.to === "active_unack" && a.priority === "high") { // a new (or escalated) high alarm
        tone();
        clearTimeout(repeatTimer);
        repeatTimer = null;
      }
      repeat();
    });
    // After a reconnect the stream resumes where it left off; events it could no longer replay are read back.
    var opened = false;
    body.addEventListener("htmx:sseOpen", function () {
      if (!opened) { opened = true; return; }
      api("GET", "/api/v1/alarms").then(function (res) {
        if (!res.ok || !Array.isArray(res.data)) return;
        unack = {};
        res.data.forEach(function (a) { if (UNACK[a.status]) unack[a.id] = a.priority; });
        countTitle();
        repeat();
      }, function () {});
    });
    countTitle();
    repeat();
  }

  // ---- step entry ------------------------------------------------------------------------------------------
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest && ev.target.closest("[data-testid=enter-step]");
    if (b) {
      var f = document.querySelector("form[data-testid=step-form][data-step='" + b.dataset.step + "']");
      if (!f) return;
      document.querySelectorAll("form[data-testid=step-form]").forEach(function (o) { if (o !== f) o.hidden = true; });
      f.hidden = false;
      f.scrollIntoView({ block: "nearest" });
      var first = f.querySelector("input, select");
      if (first) first.focus();
      return;
    }
    var c = ev.target.closest && ev.target.closest("[data-close-form]");
    if (c) { c.closest("form").hidden = true; }
  });
  document.querySelectorAll("form[data-testid=step-form]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clearErrors(form);
      var meanings = (form.dataset.signatures || "").split(",").filter(Boolean);
      var sign = cc.forms && cc.forms.sign;  // the signature dialog of base.html (forms.js)
      if (meanings.length && sign) {
        sign(meanings, "", function (sig) { postStep(form, sig); });
      } else {
        postStep(form, null);
      }
    });
  });
  function clearErrors(form) {
    form.querySelectorAll("[data-testid=field-error]").forEach(function (e) { e.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); });
    form.querySelector("[data-testid=form-error]").textContent = "";
    form.querySelector(".success").textContent = "";
  }
  // Encoding only (numbers as JSON numbers, yes/no as booleans); the API checks every value and says why.
  function formInputs(form) {
    var inputs = {};
    form.querySelectorAll("input[name], select[name]").forEach(function (el) {
      if (el.name.indexOf("__") === 0 || el.dataset.kind === "lot") return;
      var raw = el.value.trim();
      if (raw === "") return;
      var kind = el.dataset.kind;
      if (kind === "number" || kind === "integer") {
        var n = Number(raw.replace(/[_\s]/g, ""));
        inputs[el.name] = isFinite(n) && raw !== "" ? n : raw;
      } else if (kind === "bool") {
        inputs[el.name] = raw === "true";
      } else {
        inputs[el.name] = raw;
      }
    });
    return inputs;
  }
  // Lots: "lots.<reagent>.lot" and "lots.<reagent>.expiry" fields become {reagent: {lot, expiry}}.
  function formLots(form) {
    var lots = {};
    form.querySelectorAll("input[data-kind=lot]").forEach(function (el) {
      var parts = el.name.split(".");
      var raw = el.value.trim();
      if (raw === "") return;
      lots[parts[1]] = lots[parts[1]] || {};
      lots[parts[1]][parts[2]] = raw;
    });
    return lots;
  }
  function postStep(form, signature) {
    var runId = body.dataset.runId;
    var payload = { inputs: formInputs(form) };
    if (form.querySelector("input[data-kind=lot]")) payload.lots = formLots(form);
    var ov = form.querySelector("[name=__override]");
    if (ov && ov.checked) {
      payload.override = true;
      payload.override_reason = form.querySelector("[name=__override_reason]").value;
    }
    if (signature) payload.signature = signature;
    var btn = form.querySelector("[data-testid=submit-step]");
    btn.disabled = true;
    api("POST", "/api/v1/runs/" + runId + "/steps/" + encodeURIComponent(form.dataset.step), payload).then(function (res) {
      btn.disabled = false;
      showStepResult(form, res);
    }, function () { btn.disabled = false; form.querySelector("[data-testid=form-error]").textContent = "the service cannot be reached"; });
  }
  function showStepResult(form, res) {
    var formErr = form.querySelector("[data-testid=form-error]");
    var d = res.data || {};
    if (res.ok) {
      var devs = (d.deviations || []).map(function (x) { return "deviation " + x.id + ": " + x.description; });
      form.querySelector(".success").textContent = "✔ Recorded" + (devs.length ? " · " + devs.join("; ") : "");
      refreshAll("[data-refresh-on]");
      return;
    }
    var shown = false;
    if (res.status === 422 && d.errors) {
      var loose = [];
      d.errors.forEach(function (e) {
        var name = e.field || (e.loc && e.loc[e.loc.length - 1]);
        var slot = name && form.querySelector("[data-testid=field-error][data-field='" + name + "']");
        if (slot) {
          slot.textContent = e.detail || e.msg || e.rule;
          var input = form.querySelector("[name='" + name + "']");
          if (input) input.setAttribute("aria-invalid", "true");
          shown = true;
        } else {
          loose.push((name ? name + ": " : "") + (e.detail || e.msg || e.rule));
        }
      });
      if (loose.length) { formErr.textContent = loose.join("; "); shown = true; }
    }
    if (!shown) {
      // The API's detail names the rule, the window and the service clock's now (and how to override).
      formErr.textContent = d.detail || ("refused (" + res.status + ")");
    }
  }

  // ---- charts ----------------------------------------------------------------------------------------------
  var specEl = document.getElementById("chart-specs");
  if (specEl) setupCharts(JSON.parse(specEl.textContent));

  function chooseBucket(spanS) {
    for (var i = 0; i < BUCKETS.length; i++) if (spanS / BUCKETS[i] <= TARGET_POINTS) return BUCKETS[i];
    return Math.ceil(spanS / TARGET_POINTS / 86400) * 86400;
  }
  cc.chooseBucket = chooseBucket;

  // Gaps: a null where consecutive points are further apart than the series' own spacing allows.
  function withGaps(ts, vs, bucket) {
    var dts = [];
    for (var i = 1; i < ts.length; i++) dts.push(ts[i] - ts[i - 1]);
    dts.sort(function (a, b) { return a - b; });
    var typical = dts.length ? dts[Math.floor(dts.length / 2)] : bucket;
    var limit = Math.max(3 * bucket, 4 * typical);
    var xs = [], ys = [];
    for (var j = 0; j < ts.length; j++) {
      if (j > 0 && ts[j] - ts[j - 1] > limit) { xs.push((ts[j] + ts[j - 1]) / 2); ys.push(null); }
      xs.push(ts[j]); ys.push(vs[j]);
    }
    return [xs, ys];
  }

  function setupCharts(cfg) {
    var specs = cfg.charts || [];
    var state = { start: Date.parse(cfg.range.start) / 1000, end: Date.parse(cfg.range.end) / 1000, live: true };
    var rangeLabel = document.getElementById("chart-range");
    var fetchSeq = 0;

    function bandsHook(spec) {
      return function (u) {
        var L = spec.limits || {}, ctx = u.ctx, bb = u.bbox;
        var top = bb.top, bottom = bb.top + bb.height;
        function y(v) { return u.valToPos(v, "y", true); }
        function shade(from, to, color) {
          var a = Math.max(top, Math.min(from, to)), b = Math.min(bottom, Math.max(from, to));
          if (b > a) { ctx.fillStyle = color; ctx.fillRect(bb.left, a, bb.width, b - a); }
        }
        ctx.save();
        if (L.hh !== undefined) shade(top, y(L.hh), "rgba(200,30,30,0.16)");
        if (L.h !== undefined) shade(L.hh !== undefined ? y(L.hh) : top, y(L.h), "rgba(230,150,0,0.16)");
        if (L.ll !== undefined) shade(y(L.ll), bottom, "rgba(200,30,30,0.16)");
        if (L.l !== undefined) shade(y(L.l), L.ll !== undefined ? y(L.ll) : bottom, "rgba(230,150,0,0.16)");
        ctx.font = (11 * devicePixelRatio) + "px sans-serif";
        ctx.fillStyle = "#444";
        ["hh", "h", "l", "ll"].forEach(function (k) {
          if (L[k] === undefined) return;
          var py = y(L[k]);
          if (py < top || py > bottom) return;
          var label = k.toUpperCase() + " " + L[k];
          ctx.fillText(label, bb.left + bb.width - ctx.measureText(label).width - 4, py - 3);
        });
        if (spec.band) {
          ctx.strokeStyle = "#2a7a3a"; ctx.setLineDash([6, 4]); ctx.lineWidth = devicePixelRatio;
          [spec.band.low, spec.band.high].forEach(function (v) {
            var py = y(v);
            if (py < top || py > bottom) return;
            ctx.beginPath(); ctx.moveTo(bb.left, py); ctx.lineTo(bb.left + bb.width, py); ctx.stroke();
          });
        }
        ctx.restore();
      };
    }

    function yRange(spec) {
      return function (u, min, max) {
        var L = spec.limits || {};
        var vals = [min, max];
        ["l", "h"].forEach(function (k) { if (L[k] !== undefined) vals.push(L[k]); });
        if (spec.band) { vals.push(spec.band.low, spec.band.high); }
        vals = vals.filter(function (v) { return v !== null && v !== undefined && isFinite(v); });
        if (!vals.length) return [0, 1];
        var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
        var padv = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1;
        return [lo - padv, hi + padv];
      };
    }

    // Tick labels in UTC, 24 h: the date where it changes (and on the first tick), the time otherwise.
    function xTicks(u, splits) {
      var prev = null;
      return splits.map(function (ts) {
        var d = new Date(ts * 1000);
        var day = d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
        var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
        var label = day !== prev ? hm + "\n" + day.slice(5) : hm;
        prev = day;
        return label;
      });
    }

    function makeChart(spec) {
      var holder = document.querySelector("[data-plot='" + spec.channel + "']");
      var latestEl = document.querySelector("[data-latest='" + spec.channel + "']");
      var c = { spec: spec, xs: [], ys: [], lastMeta: null, programmatic: false, plot: null };
      var opts = {
        width: Math.max(280, holder.clientWidth), height: 180,
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
        cursor: { sync: { key: "run" }, drag: { x: true, y: false } },
        legend: { show: false },
        scales: { x: { time: true }, y: { range: yRange(spec) } },
        series: [{}, { label: spec.label, stroke: "#1f5fbf", width: 1.5, spanGaps: false,
          points: { show: false } }],
        axes: [{ stroke: "#333", grid: { stroke: "#eee" }, values: xTicks },
          { stroke: "#333", grid: { stroke: "#eee" }, size: 70,
            values: function (u, vals) { return vals.map(fmtNum); } }],
        hooks: {
          drawClear: [bandsHook(spec)],
          draw: [function () {
            if (c.lastMeta && c.lastMeta.drawnAt === null) c.lastMeta.drawnAt = performance.timeOrigin + performance.now();
          }],
          setSelect: [function (u) {
            if (u.select.width < 5) return;
            var a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            zoomTo(a, b);
          }],
        },
      };
      // uPlot zooms on drag by itself; we take the selection and fetch history at a fitting bucket instead.
      opts.cursor.drag.setScale = false;
      c.plot = new uPlot(opts, [[], []], holder);
      c.setData = function (reset) {
        c.plot.setData([c.xs, c.ys], false);
        c.plot.setScale("x", { min: state.start, max: state.live ? Math.max(state.end, c.xs.length ? c.xs[c.xs.length - 1] : state.end) : state.end });
      };
      c.showLatest = function () {
        if (!latestEl) return;
        var v = c.ys.length ? c.ys[c.ys.length - 1] : null;
        latestEl.textContent = v === null || v === undefined ? "" : "now " + fmtNum(v) + (spec.unit ? " " + spec.unit : "");
      };
      cc.charts[spec.channel] = {
        count: function () { return c.xs.length; },
        last: function () {
          if (!c.xs.length) return null;
          var i = c.xs.length - 1;
          var m = c.lastMeta && c.lastMeta.t === c.xs[i] ? c.lastMeta : { receivedAt: null, drawnAt: null };
          return { t: c.xs[i], v: c.ys[i], receivedAt: m.receivedAt, drawnAt: m.drawnAt };
        },
        range: function () { return { start: state.start, end: state.end, live: state.live }; },
        plot: c.plot,
      };
      return c;
    }

    var charts = specs.map(makeChart);
    window.addEventListener("resize", function () {
      charts.forEach(function (c) {
        var h = document.querySelector("[data-plot='" + c.spec.channel + "']");
        c.plot.setSize({ width: Math.max(280, h.clientWidth), height: 180 });
      });
    });

    function load() {
      var seq = ++fetchSeq;
      if (state.live) state.end = clockNow() / 1000;
      var span = Math.max(1, state.end - state.start);
      var bucket = chooseBucket(span);
      if (rangeLabel) rangeLabel.textContent = fmtUtc(state.start * 1000) + " – " + fmtUtc(state.end * 1000) +
        " · bucket " + bucket + " s" + (state.live ? " · live" : "");
      var q = "?start=" + encodeURIComponent(new Date(state.start * 1000).toISOString()) +
        "&end=" + encodeURIComponent(new Date(state.end * 1000 + (state.live ? 1000 : 0)).toISOString()) + "&bucket=" + bucket + "s";
      return Promise.all(charts.map(function (c) {
        if (!c.spec.channel_id) return Promise.resolve();
        return fetch("/api/v1/channels/" + c.spec.channel_id + "/telemetry" + q, { credentials: "same-origin" })
          .then(function (r) { if (r.status === 401) toLogin(); return r.ok ? r.json() : { points: [] }; })
          .then(function (data) {
            if (seq !== fetchSeq) return;
            var ts = [], vs = [];
            (data.points || []).forEach(function (p) {
              ts.push(Date.parse(p.time) / 1000);
              // only good samples are charted: bad, uncertain and implausible ones are gaps (buckets hold good only)
              var raw = p.quality === undefined || p.quality === null || p.quality === "good" ? p.value : null;
              vs.push(p.avg !== undefined && p.avg !== null ? p.avg : (p.n ? null : (raw === undefined ? null : raw)));
            });
            var g = withGaps(ts, vs, bucket);
            c.xs = g[0]; c.ys = g[1]; c.lastMeta = null;
            if (c.xs.length > MAX_POINTS) { c.xs = c.xs.slice(-MAX_POINTS); c.ys = c.ys.slice(-MAX_POINTS); }
            c.setData();
            c.showLatest();
          });
      }));
    }
    function zoomTo(a, b) {
      if (b - a < 60) { var m = (a + b) / 2; a = m - 30; b = m + 30; }
      state.start = a; state.end = b;
      state.live = b >= clockNow() / 1000 - 1;
      load();
    }
    function showRange() {
      if (!rangeLabel) return;
      var end = state.live ? clockNow() : state.end * 1000;
      rangeLabel.textContent = fmtUtc(state.start * 1000) + " – " + fmtUtc(end) + " · bucket " +
        chooseBucket(Math.max(1, state.end - state.start)) + " s" + (state.live ? " · live" : "");
    }
    setInterval(showRange, 1000);
    cc.chartsLoad = load;
    cc.chartsZoom = zoomTo;
    document.querySelectorAll("[data-chart]").forEach(function (b) {
      b.addEventListener("click", function () {
        var span = state.end - state.start, now = clockNow() / 1000;
        var act = b.dataset.chart;
        if (act === "back") zoomTo(state.start - span / 2, state.end - span / 2);
        else if (act === "forward") zoomTo(state.start + span / 2, Math.min(now, state.end + span / 2));
        else if (act === "zoomin") zoomTo(state.start + span / 4, state.end - span / 4);
        else if (act === "zoomout") zoomTo(state.start - span / 2, Math.min(now, state.end + span / 2));
        else if (act === "live") {
          state.start = Date.parse(cfg.range.start) / 1000;
          state.live = true;
          load();
        }
      });
    });

    var byChannel = {};
    charts.forEach(function (c) { byChannel[c.spec.channel] = c; });
    on("reading", function (d) {
      var c = byChannel[d.channel];
      if (!c) return;
      var t = Date.parse(d.time) / 1000;
      var n = c.xs.length;
      if (n && t <= c.xs[n - 1]) return;
      var v = d.value === null || d.value === undefined || d.quality !== "good" ? null : d.value;
      c.xs.push(t); c.ys.push(v);
      while (c.xs.length > MAX_POINTS) { c.xs.shift(); c.ys.shift(); }
      c.lastMeta = { t: t, receivedAt: Date.now(), drawnAt: null };
      if (state.live) {
        state.end = Math.max(state.end, t);
        if (c.xs[0] > state.start) state.start = Math.min(state.start, c.xs[0]);
      }
      c.setData();
      c.showLatest();
    });
    pending.push(load());
  }

  checkReady();
})();
