// culturectl dashboard, a device's page: each point's value, quality and time follow the page's `reading` events
// (the stream carries this device's channels only). Numbers as the server shows them (3 significant digits).
(function () {
  "use strict";
  var cc = window.culturectl || {};
  if (!cc.on) return;
  var fmt = cc.fmt; // app.js: the dashboard's one set of formatters
  function cells(testid, channel) {
    return document.querySelectorAll("[data-testid=" + testid + "][data-channel='" + channel + "']");
  }
  cc.on("reading", function (d) {
    if (!d || !d.channel) return;
    var t = Date.parse(d.time);
    cells("point-value", d.channel).forEach(function (el) {
      var shown = el.dataset.time ? Date.parse(el.dataset.time) : NaN;
      if (!isNaN(shown) && !isNaN(t) && t < shown) return;  // an older reading than the one shown
      el.textContent = fmt.num(d.value, 3);
      el.dataset.time = d.time;
    });
    cells("point-quality", d.channel).forEach(function (el) { el.textContent = d.quality; });
    if (!isNaN(t)) cells("point-time", d.channel).forEach(function (el) { el.textContent = fmt.utc(t, true); });
  });
})();
