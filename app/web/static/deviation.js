// culturectl dashboard, a deviation's page: its charts (app.js setupCharts, from #chart-specs) show the hours around
// the event; when that window ended before now they stay on it instead of following the live data.
(function () {
  "use strict";
  var cc = window.culturectl || {};
  var el = document.getElementById("chart-specs");
  if (!el || !cc.chartsZoom) return;
  var range = JSON.parse(el.textContent).range || {};
  if (range.fixed) cc.chartsZoom(Date.parse(range.start) / 1000, Date.parse(range.end) / 1000);
})();
