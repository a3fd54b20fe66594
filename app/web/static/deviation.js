// culturectl dashboard, a deviation's page: its charts (app.js setupCharts, from #chart-specs) show the hours around
// the event; when that window ended before now they stay on it instead of following the live data. When someone
// comments on or closes this deviation meanwhile, a notice says so and offers a reload (a form being filled in is
// never replaced under the user's hands).
(function () {
  "use strict";
  var cc = window.culturectl || {};
  var notice = document.getElementById("dev-changed");
  if (notice && cc.on) {
    cc.on("deviation", function (d) {
      if (!d || String(d.id) !== notice.dataset.deviationId || !d.change) return;
      if (document.querySelector("form[data-api-form][data-busy=true]")) return; // our own change: the page reloads
      document.getElementById("dev-change").textContent = d.change + (d.status ? ", now " + d.status : "");
      notice.hidden = false;
    });
  }
  var el = document.getElementById("chart-specs");
  if (!el || !cc.chartsZoom) return;
  var range = JSON.parse(el.textContent).range || {};
  if (range.fixed) cc.chartsZoom(Date.parse(range.start) / 1000, Date.parse(range.end) / 1000);
})();
