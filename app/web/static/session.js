/* culturectl dashboard: the inactivity lock and the expired-password form ([identity.md](identity.md#inactivity-lock)).
 *
 * A user action is pointer, key or touch input on the page (live data arriving is not). The page reports it to the
 * server at most once a heartbeat (POST /api/v1/auth/activity, {"idle_s": seconds since the last input}), so the
 * server knows the true time of the last input and refuses actions from exactly the limit on; after
 * data-inactivity-s seconds without one the page covers itself with a modal dialog (the rest of the page inert,
 * the focus kept in the dialog, the page hidden unless the site keeps wall screens live) and asks for the
 * password again (POST /api/v1/auth/unlock). On load, on a return from the browser's back/forward cache and when
 * its live stream fails, the page asks the server how long the session has been idle (GET /api/v1/auth/me) and
 * locks at once if it is. Tabs of one browser share their input and unlocks through localStorage; a tab of
 * another user than the one who unlocked reloads (its session was taken over). */
(function () {
  "use strict";
  var body = document.body;
  var cc = (window.culturectl = window.culturectl || {});
  var ACTIVITY_KEY = "culturectl.activity", UNLOCK_KEY = "culturectl.unlock";

  function detail(res, fallback) {
    var d = res.data || {};
    return d.detail || fallback || ("request failed (" + res.status + ")");
  }
  function kind(res) {
    var t = (res.data && res.data.type) || "";
    return t.slice(t.lastIndexOf("/") + 1);
  }

  // ---- the inactivity lock ---------------------------------------------------------------------------------
  var limitS = parseFloat(body.dataset.inactivityS || "0");
  var dlg = document.getElementById("lock-dialog");
  if (limitS > 0 && dlg) setupLock();

  function setupLock() {
    var limitMs = limitS * 1000;
    var heartbeatMs = Math.max(1000, parseFloat(body.dataset.inactivityHeartbeatS || "30") * 1000);
    var keepLive = body.dataset.inactivityKeepLive === "true";
    var own = body.dataset.username || "";
    var form = document.getElementById("lock-form");
    var errEl = document.getElementById("lock-error");
    var submit = document.getElementById("lock-submit");
    var left = document.getElementById("idle-left");
    var lastInput = Date.now(), lastSent = Date.now(); // loading the page was an action the server saw
    var reported = lastInput; // the last input the server was told of
    var sources = [], streamsClosed = false;
    var lock = (cc.lock = { active: false, locks: 0, unlocks: 0 });
    body.dataset.locked = "false";

    body.addEventListener("htmx:sseOpen", function (ev) {
      var src = ev.detail && ev.detail.source;
      if (src && sources.indexOf(src) < 0) sources.push(src);
      if (lock.active && !keepLive) closeStreams();
    });
    function closeStreams() {
      sources.forEach(function (s) { try { s.close(); } catch (e) { /* closed already */ } });
      streamsClosed = true;
      var live = document.getElementById("live");
      if (live) { live.dataset.state = "paused"; live.textContent = "○ paused (locked)"; }
    }

    function beat() {
      var now = Date.now(), at = lastInput;
      lastSent = now;
      cc.api("POST", "/api/v1/auth/activity", { idle_s: Math.max(0, (now - at) / 1000) }).then(function (res) {
        if (res.ok) reported = Math.max(reported, at);
        else if (res.status === 401 && kind(res) === "session-idle") lockNow();
      }, function () { /* offline: the next heartbeat tries again */ });
    }
    function input() {
      if (lock.active) return;
      var now = Date.now();
      lastInput = now;
      try { localStorage.setItem(ACTIVITY_KEY, String(now)); } catch (e) { /* private mode */ }
      if (now - lastSent >= heartbeatMs) beat();
    }
    // Is this session idle on the server (a page from the back/forward cache, a stream ended)? Lock at once if so;
    // else the later of the server's last action and this page's last input counts.
    var checking = false; // a page back from the cache waits for the answer before its own timer may lock it
    function check() {
      checking = true;
      cc.api("GET", "/api/v1/auth/me").then(function (res) {
        checking = false;
        if (res.status === 401) { lock.active = false; location.reload(); return; } // ended: the login
        var d = res.data || {};
        if (!res.ok) return;
        if (d.name && d.name !== own) { location.reload(); return; } // another user's session now
        if (d.locked) { lockNow(); return; }
        if (typeof d.idle_s === "number" && !lock.active) {
          var seen = Date.now() - d.idle_s * 1000;
          lastInput = Math.max(lastInput, seen);
          reported = Math.max(reported, seen);
        }
      }, function () { checking = false; /* offline: the page's own timer holds */ });
    }
    check();
    window.addEventListener("pagehide", function (ev) { if (ev.persisted) checking = true; });
    window.addEventListener("pageshow", function (ev) { if (ev.persisted) check(); });
    body.addEventListener("htmx:sseError", function () { if (!lock.active) check(); });
    ["pointerdown", "pointermove", "keydown", "touchstart", "wheel"].forEach(function (type) {
      document.addEventListener(type, input, { capture: true, passive: true });
    });
    window.addEventListener("storage", function (e) {
      if (e.key === ACTIVITY_KEY && e.newValue && !lock.active) {
        lastInput = Math.max(lastInput, parseFloat(e.newValue) || 0);
        reported = Math.max(reported, lastInput); // that tab tells the server
      } else if (e.key === UNLOCK_KEY && e.newValue) {
        var msg = {};
        try { msg = JSON.parse(e.newValue) || {}; } catch (err) { /* not ours */ }
        if (msg.username && msg.username !== own) { lock.active = false; location.reload(); } // taken over
        else if (msg.username === own && lock.active) unlocked(); // unlocked in another tab of this browser
      }
    });

    function lockNow() {
      if (lock.active) return;
      lock.active = true;
      lock.locks += 1;
      body.dataset.locked = "true";
      body.classList.add("is-locked");
      if (keepLive) body.classList.add("lock-live");
      setInert(true);
      if (!keepLive) closeStreams();
      errEl.textContent = "";
      form.elements.username.value = own;
      form.elements.password.value = "";
      if (left) left.textContent = "";
      if (!dlg.open) dlg.showModal();
      form.elements.password.focus();
    }
    function unlocked() {
      lock.active = false;
      lock.unlocks += 1;
      lastInput = lastSent = reported = Date.now();
      if (!keepLive && streamsClosed) { location.reload(); return; } // the page's data is stale: load it anew
      body.dataset.locked = "false";
      body.classList.remove("is-locked", "lock-live");
      setInert(false);
      form.elements.password.value = "";
      dlg.close();
    }
    function setInert(on) {
      document.querySelectorAll("body > header, body > main, body > .skip").forEach(function (el) { el.inert = on; });
    }
    cc.lockNow = lockNow;

    // The dialog cannot be dismissed: Escape is refused, and a dialog closed anyway (the browser's own rules)
    // opens again while the lock holds.
    dlg.addEventListener("cancel", function (ev) { ev.preventDefault(); });
    // Tab and Shift+Tab go round the dialog's fields and buttons; the focus never leaves it for the page.
    document.addEventListener("keydown", function (ev) {
      if (!lock.active || ev.key !== "Tab") return;
      var f = Array.prototype.filter.call(dlg.querySelectorAll("input, button, select, textarea, a[href]"),
        function (el) { return !el.disabled && !el.hidden; });
      if (!f.length) return;
      var first = f[0], last = f[f.length - 1], at = document.activeElement;
      if (!dlg.contains(at)) { ev.preventDefault(); form.elements.password.focus(); }
      else if (ev.shiftKey && at === first) { ev.preventDefault(); last.focus(); }
      else if (!ev.shiftKey && at === last) { ev.preventDefault(); first.focus(); }
    }, true);
    dlg.addEventListener("close", function () { if (lock.active) dlg.showModal(); });

    setInterval(function () {
      if (lock.active) return;
      var now = Date.now();
      // input not yet reported: tell the server within a heartbeat of it
      if (lastInput > reported && now - lastSent >= heartbeatMs) beat();
      var rest = limitMs - (now - lastInput);
      if (rest <= 0) { if (!checking) lockNow(); return; }
      // the time left, quietly and only near the end (the last minute, or the last fifth of a short limit)
      var text = rest <= Math.min(60000, limitMs / 5) ? "locks in " + Math.ceil(rest / 1000) + " s" : "";
      if (left && left.textContent !== text) left.textContent = text;
    }, 500);

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var username = form.elements.username.value.trim() || own;
      var password = form.elements.password.value;
      errEl.textContent = "";
      if (!password) { errEl.textContent = "enter the password"; form.elements.password.focus(); return; }
      var other = username !== own;
      submit.disabled = true;
      cc.api("POST", "/api/v1/auth/unlock", other ? { username: username, password: password } : { password: password })
        .then(function (res) {
          submit.disabled = false;
          if (res.ok) {
            var who = res.data && res.data.unlocked === false ? username : own;
            try {
              localStorage.setItem(UNLOCK_KEY, JSON.stringify({ at: Date.now(), username: who }));
            } catch (e) { /* private mode */ }
            if (who !== own) { lock.active = false; location.reload(); return; } // another user's page now
            unlocked();
            return;
          }
          var k = kind(res);
          if (res.status === 401 && k !== "wrong-password" && k !== "login-failed") {
            // this session ended or expired meanwhile: a fresh login with what was typed
            return cc.api("POST", "/api/v1/auth/login", { username: username, password: password }).then(function (r2) {
              if (r2.ok) { location.reload(); return; }
              errEl.textContent = detail(r2);
              form.elements.password.select();
            });
          }
          errEl.textContent = detail(res);
          form.elements.password.select();
        }, function () { submit.disabled = false; errEl.textContent = "the service cannot be reached"; });
    });
    document.getElementById("lock-logout").addEventListener("click", function () {
      lock.active = false;
      cc.api("POST", "/api/v1/auth/logout").then(function () { location.href = "/login"; },
        function () { location.href = "/login"; });
    });
  }

  // ---- an expired password: the login page asks for a new one before going on -------------------------------
  var change = document.getElementById("password-change");
  cc.passwordChange = function (current, next) {
    if (!change) { location.href = next; return; }
    var login = document.getElementById("login");
    if (login) login.hidden = true;
    change.hidden = false;
    change.elements.new_password.focus();
    change.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var err = document.getElementById("password-change-error");
      var a = change.elements.new_password.value, b = change.elements.new_password_again.value;
      err.textContent = "";
      if (a !== b) { err.textContent = "the two new passwords differ"; change.elements.new_password_again.select(); return; }
      cc.api("POST", "/api/v1/users/me/password", { current_password: current, new_password: a }).then(function (res) {
        if (res.ok) { location.href = next; return; }
        err.textContent = detail(res);
        change.elements.new_password.select();
      }, function () { err.textContent = "the service cannot be reached"; });
    });
  };
})();
