// culturectl dashboard, People > notifications: the "send test" of a rule or a rota. The form posts
// {"rule": name} or {"rota": name} to POST /api/v1/notifications/test and draws its answer, one line per recipient
// and contact point (sent or not, and what the channel said); a refusal goes to the form's error line.
(function () {
  "use strict";

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function draw(out, d) {
    out.textContent = "";
    out.appendChild(el("p", "Sent at " + d.at + " to " + (d.recipients || []).join(", ") + ":"));
    var wrap = el("div", undefined, "table-wrap");
    var table = el("table", undefined, "list");
    var head = el("tr");
    ["User", "Contact point", "Result", "Detail"].forEach(function (h) {
      var th = el("th", h); th.scope = "col"; head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    var tbody = table.appendChild(el("tbody"));
    (d.sends || []).forEach(function (s) {
      var tr = el("tr");
      tr.dataset.testid = "notify-test-send";
      tr.dataset.username = s.username;
      tr.dataset.ok = s.ok ? "true" : "false";
      tr.appendChild(el("td", s.username));
      tr.appendChild(el("td", s.kind ? s.kind + ": " + s.label : "—"));
      tr.appendChild(el("td", s.ok ? "\u2714 sent" : "\u2716 not sent", s.ok ? "ok-text" : "error"));
      tr.appendChild(el("td", s.detail));
      tbody.appendChild(tr);
    });
    wrap.appendChild(table);
    out.appendChild(wrap);
    out.hidden = false;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.matches || !form.matches("form[data-notify-test]")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var out = document.getElementById(form.dataset.out);
    var fe = form.querySelector("[data-testid=form-error]");
    var btn = form.querySelector("button[type=submit]");
    var body = {};
    body[form.dataset.what] = form.dataset.name;
    fe.textContent = "";
    out.hidden = true;
    btn.disabled = true;
    window.culturectl.api("POST", "/api/v1/notifications/test", body).then(function (res) {
      btn.disabled = false;
      if (res.ok) draw(out, res.data || {});
      else fe.textContent = (res.data && res.data.detail) || ("refused (" + res.status + ")");
    }, function () {
      btn.disabled = false;
      fe.textContent = "the service cannot be reached";
    });
  });
})();
