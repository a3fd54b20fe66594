// culturectl dashboard: forms that send their fields to the JSON API, the rules' answers shown next to the fields.
//
// A form carries data-api-form, data-method (POST, PATCH, PUT) and data-url (the API path). Its fields' names are
// the body's keys ("a.b" nests: {"a": {"b": ...}}); data-kind says how a value is sent: number, integer, bool (a
// checkbox or "true"/"false"), list (comma or line separated), json (parsed), text (the default). Empty fields are
// left out unless data-keep-empty. data-sign="approval,review" asks for an electronic signature first (the
// signature dialog in base.html: meaning and password) and sends it as "signature". On success: data-done="reload"
// (the default) reloads the page, data-done="/path/{id}" goes to that path filled from the answer's JSON, and
// data-done="show" writes the answer's fields into the form's [data-show=<field>] elements and reveals them.
// A problem answer: each error of a 422 goes to the [data-field=<name>] slot of its field (the last part of its
// loc, or its "field"), with aria-invalid on the input; so does a refusal whose problem names a top-level "field";
// anything else goes to the form's [data-testid=form-error].
// A form with data-confirm asks the browser's confirm() with that text first. A 401 whose session has ended goes
// to the login page (app.js toLogin); a 401 of a wrong signature password is shown like any problem.
(function () {
  "use strict";
  var cc = window.culturectl || (window.culturectl = {});
  var body = document.body;

  var api = cc.api; // app.js: the JSON API with the session cookie, problem JSON back

  function setPath(obj, path, value) {
    var parts = path.split(".");
    var o = obj;
    for (var i = 0; i < parts.length - 1; i++) {
      if (typeof o[parts[i]] !== "object" || o[parts[i]] === null) o[parts[i]] = {};
      o = o[parts[i]];
    }
    o[parts[parts.length - 1]] = value;
  }

  function encode(el) {
    var kind = el.dataset.kind || "text";
    if (el.type === "checkbox") return { value: kind === "list" ? undefined : el.checked, skip: false };
    var raw = el.value;
    if (kind !== "text") raw = raw.trim();
    if (raw === "" && el.dataset.keepEmpty === undefined) return { skip: true };
    if (kind === "number" || kind === "integer") {
      var n = Number(raw.replace(/[_\s]/g, ""));
      return { value: isFinite(n) ? n : raw };  // not a number: the API says why
    }
    if (kind === "bool") return { value: raw === "true" };
    if (kind === "list") return { value: raw.split(/[,\n]/).map(function (s) { return s.trim(); }).filter(Boolean) };
    if (kind === "json") {
      try { return { value: JSON.parse(raw) }; } catch (e) { return { error: "not valid JSON: " + e.message }; }
    }
    return { value: raw };
  }

  // The form's body: its named fields (checkbox groups of data-kind=list collect their checked values).
  function payloadOf(form) {
    var out = {};
    var errors = [];
    var lists = {};
    form.querySelectorAll("input[name], select[name], textarea[name]").forEach(function (el) {
      if (el.disabled || el.name.indexOf("__") === 0 || el.closest("[data-api-ignore]")) return;
      if (el.type === "checkbox" && el.dataset.kind === "list") {
        lists[el.name] = lists[el.name] || [];
        if (el.checked) lists[el.name].push(el.value);
        return;
      }
      if (el.type === "radio" && !el.checked) return;
      var enc = encode(el);
      if (enc.error) { errors.push({ field: el.name, detail: enc.error }); return; }
      if (enc.skip) return;
      setPath(out, el.name, enc.value);
    });
    Object.keys(lists).forEach(function (k) { setPath(out, k, lists[k]); });
    return { body: out, errors: errors };
  }

  function clear(form) {
    form.querySelectorAll("[data-testid=field-error]").forEach(function (e) { e.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); });
    var fe = form.querySelector("[data-testid=form-error]");
    if (fe) fe.textContent = "";
    var ok = form.querySelector("[data-testid=form-success]");
    if (ok) ok.textContent = "";
  }

  function slotFor(form, names) {
    for (var i = 0; i < names.length; i++) {
      if (!names[i]) continue;
      var slot = form.querySelector("[data-testid=field-error][data-field='" + names[i] + "']");
      if (slot) return { slot: slot, name: names[i] };
    }
    return null;
  }

  // Problem JSON next to its field; what has no field goes to the form's own error line.
  function showProblem(form, res) {
    var d = res.data || {};
    var loose = [];
    var shown = false;
    (d.errors || []).forEach(function (e) {
      var loc = (e.loc || []).filter(function (p) { return p !== "body"; });
      var names = [e.field, loc.join("."), loc.length ? String(loc[loc.length - 1]) : null];
      var hit = slotFor(form, names);
      var text = e.detail || e.msg || e.rule || "invalid";
      if (hit) {
        hit.slot.textContent = hit.slot.textContent ? hit.slot.textContent + "; " + text : text;
        var input = form.querySelector("[name='" + hit.name + "']");
        if (input) input.setAttribute("aria-invalid", "true");
        shown = true;
      } else {
        loose.push((loc.length ? loc.join(".") + ": " : e.field ? e.field + ": " : "") + text);
      }
    });
    if (!shown && d.field && d.detail) {  // a rule's refusal about one field of the body (its "field" fact)
      var own = slotFor(form, [d.field]);
      if (own) {
        own.slot.textContent = d.detail;
        var el = form.querySelector("[name='" + own.name + "']");
        if (el) el.setAttribute("aria-invalid", "true");
        shown = true;
      }
    }
    var fe = form.querySelector("[data-testid=form-error]");
    var text = loose.join("; ");
    if (!shown && !text) text = d.detail || ("refused (" + res.status + ")");  // the rule, the limit, the window
    if (fe) fe.textContent = text;
    var first = form.querySelector("[aria-invalid=true]");
    if (first) first.focus();
  }

  function done(form, res) {
    var how = form.dataset.done || "reload";
    var d = res.data || {};
    if (how === "show") {
      form.querySelectorAll("[data-show]").forEach(function (el) {
        var v = d[el.dataset.show];
        el.textContent = v === undefined || v === null ? "" : String(v);
      });
      form.querySelectorAll("[data-shown]").forEach(function (el) { el.hidden = false; });
      var ok = form.querySelector("[data-testid=form-success]");
      if (ok) ok.textContent = form.dataset.successText || "\u2714 Done";
      return;
    }
    if (how === "reload") { location.reload(); return; }
    location.href = how.replace(/\{(\w+)\}/g, function (_, k) { return encodeURIComponent(d[k] === undefined ? "" : d[k]); });
  }

  function send(form, signature) {
    var p = payloadOf(form);
    if (p.errors.length) { showProblem(form, { status: 422, data: { errors: p.errors } }); return; }
    if (signature) p.body.signature = signature;
    var btn = form.querySelector("button[type=submit]");
    if (btn) btn.disabled = true;
    form.dataset.busy = "true";
    api(form.dataset.method || "POST", form.dataset.url, p.body).then(function (res) {
      if (btn) btn.disabled = false;
      form.dataset.busy = "false";
      if (res.ok) { done(form, res); return; }
      if (res.status !== 401) { showProblem(form, res); return; }
      // a wrong signature password is a 401 too: only an ended session goes to the login
      api("GET", "/api/v1/auth/me").then(function (me) {
        if (me.status === 401 && cc.toLogin) cc.toLogin(); else showProblem(form, res);
      }, function () { showProblem(form, res); });
    }, function () {
      if (btn) btn.disabled = false;
      form.dataset.busy = "false";
      var fe = form.querySelector("[data-testid=form-error]");
      if (fe) fe.textContent = "the service cannot be reached";
    });
  }

  // ---- the electronic signature dialog (base.html): every signed action of the dashboard asks through it --------
  var dlg = document.getElementById("api-sign-dialog");
  var onSigned = null;
  if (dlg) {
    document.getElementById("api-sign-cancel").addEventListener("click", function () { dlg.close(); onSigned = null; });
    document.getElementById("api-sign-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var pw = document.getElementById("api-sign-password");
      var sig = { meaning: document.getElementById("api-sign-meaning").value, password: pw.value };
      pw.value = "";
      dlg.close();
      var then = onSigned;
      onSigned = null;
      if (then) then(sig);
    });
  }
  // Ask for a signature with one of `meanings`; `then({meaning, password})` once given (not on cancel).
  function sign(meanings, what, then) {
    var sel = document.getElementById("api-sign-meaning");
    sel.innerHTML = "";
    meanings.forEach(function (m) { var o = document.createElement("option"); o.value = m; o.textContent = m; sel.appendChild(o); });
    document.getElementById("api-sign-what").textContent = what || "";
    document.getElementById("api-sign-password").value = "";
    onSigned = then;
    dlg.showModal();
    document.getElementById("api-sign-password").focus();
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.matches || !form.matches("form[data-api-form]")) return;
    ev.preventDefault();
    clear(form);
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    if (form.dataset.sign && dlg) {
      sign(form.dataset.sign.split(",").filter(Boolean), form.dataset.signWhat, function (sig) { send(form, sig); });
    } else {
      send(form, null);
    }
  });
  cc.forms = { payloadOf: payloadOf, showProblem: showProblem, sign: dlg ? sign : null };
})();
