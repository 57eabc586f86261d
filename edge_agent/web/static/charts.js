// Charts of the household page: uPlot (vendored) draws each <figure> that holds a <script class="chart-data">
// (JSON: x = epoch seconds, series = [{label, values}], unit). No inline script (the CSP forbids it); the data
// blocks are inert JSON. Without JavaScript or uPlot the numbers are still in the page's tables.
(function () {
  "use strict";
  var COLORS = ["#0b5cab", "#b5470b", "#1b6e2e", "#7a3db8", "#a8200d", "#00707a", "#5c5c5c"];
  var charts = [];

  function draw(fig) {
    var data = JSON.parse(fig.querySelector("script.chart-data").textContent);
    var box = fig.querySelector(".chart-box");
    if (!window.uPlot || !data.x.length) {
      box.classList.add("chart-empty");
      return;
    }
    var width = Math.max(240, box.clientWidth || fig.clientWidth - 24);
    var lang = document.documentElement.lang === "en" ? "en-US" : "ja-JP";
    // the gateway's local time (as in the rest of the page), whatever the phone's time zone
    var off = data.tz_offset_s || 0;
    var tzDate = function (ts) {
      var d = new Date((ts + off) * 1000);
      return new Date(d.getTime() + d.getTimezoneOffset() * 60000);
    };
    var values = [data.x];
    var fmtFull = new Intl.DateTimeFormat(lang, {month: "numeric", day: "numeric", hour: "numeric", minute: "2-digit"});
    var series = [{label: lang === "en-US" ? "Time" : "時刻",
                   value: function (u, v) { return v == null ? "—" : fmtFull.format(tzDate(v)); }}];
    data.series.forEach(function (s, i) {
      series.push({label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
                   points: {show: data.x.length < 60}, value: function (u, v) {
                     return v == null ? "—" : Math.round(v) + " " + data.unit; }});
      values.push(s.values);
    });
    var fmt = new Intl.DateTimeFormat(lang, data.bucket_s >= 3600 ?
      {month: "numeric", day: "numeric", hour: "numeric"} : {hour: "numeric", minute: "2-digit"});
    var opts = {
      width: width,
      height: Math.round(Math.min(320, Math.max(180, width * 0.55))),
      series: series,
      legend: {live: true},
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}},
      tzDate: tzDate,
      axes: [
        {values: function (u, ticks) { return ticks.map(function (t) { return fmt.format(tzDate(t)); }); },
         size: 40, space: 80},
        {label: data.unit, size: 56}
      ]
    };
    charts.push({plot: new window.uPlot(opts, values, box), box: box, fig: fig});
  }

  function resize() {
    charts.forEach(function (c) {
      var width = Math.max(240, c.box.clientWidth || c.fig.clientWidth - 24);
      c.plot.setSize({width: width, height: Math.round(Math.min(320, Math.max(180, width * 0.55)))});
    });
  }

  function init() {
    document.querySelectorAll("figure.chart").forEach(draw);
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(resize, 150);
    });
    document.documentElement.setAttribute("data-charts", String(charts.length));
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
