// culturectl dashboard, a device's page: each point's value, quality and time follow the page's `reading` events
// (the stream carries this device's channels only). Numbers as the server shows them (3 significant digits).
(function () {
  "use strict";
  var cc = window.culturectl || {};
  if (!cc.on) return;
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtUtc(ms) {
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + pad(d.getUTCHours()) +
      ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }
  function fmtNum(v) {
    if (v === null || v === undefined) return "\u2014";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2).replace(/e([+-])(\d)$/, "e$10$2");
    return String(Number(v.toPrecision(3)));
  }
  function cells(testid, channel) {
    return document.querySelectorAll("[data-testid=" + testid + "][data-channel='" + channel + "']");
  }
  cc.on("reading", function (d) {
    if (!d || !d.channel) return;
    var t = Date.parse(d.time);
    cells("point-value", d.channel).forEach(function (el) {
      var shown = el.dataset.time ? Date.parse(el.dataset.time) : NaN;
      if (!isNaN(shown) && !isNaN(t) && t < shown) return;  // an older reading than the one shown
      el.textContent = fmtNum(d.value);
      el.dataset.time = d.time;
    });
    cells("point-quality", d.channel).forEach(function (el) { el.textContent = d.quality; });
    if (!isNaN(t)) cells("point-time", d.channel).forEach(function (el) { el.textContent = fmtUtc(t); });
  });
})();
