// wandb-mirror charts: fetch decimated series from the server and draw them with uPlot.
// Drag across a chart to zoom: the window is fetched again, at full detail when it holds few
// enough points. Double-click or "reset" returns to the whole run.
"use strict";
(function () {
  const host = document.getElementById("charts");
  if (!host || typeof uPlot === "undefined") return;
  const src = host.dataset.src;
  const xKey = host.dataset.x;
  const runs = JSON.parse(host.dataset.runs);
  const labels = JSON.parse(host.dataset.labels);
  const keys = JSON.parse(host.dataset.keys);
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                   "#be185d", "#4d7c0f", "#7c2d12", "#334155"];
  const charts = [];
  window.mirrorCharts = charts;
  let pending = keys.length;

  function seriesUrl(chartKeys, width, lo, hi) {
    const url = new URL(src, location.href);
    runs.forEach((r) => url.searchParams.append("run", r));
    chartKeys.forEach((k) => url.searchParams.append("key", k));
    url.searchParams.set("x", xKey);
    url.searchParams.set("width", String(width));
    if (lo !== undefined) url.searchParams.set("lo", String(lo));
    if (hi !== undefined) url.searchParams.set("hi", String(hi));
    return url;
  }

  async function fetchSeries(chartKeys, width, lo, hi) {
    const response = await fetch(seriesUrl(chartKeys, width, lo, hi), { credentials: "same-origin" });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return response.json();
  }

  function pick(payload, key) {
    return runs.map((r) => payload.series.find((s) => s.run === r && s.key === key));
  }

  function toData(parts) {
    if (parts.length === 1) return [parts[0].x, parts[0].y];
    return uPlot.join(parts.map((s) => [s.x, s.y]));
  }

  function number(v) {
    return Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(4) : String(+v.toPrecision(6));
  }

  function describe(parts, payload) {
    return parts.map((s, i) => {
      const name = parts.length > 1 ? labels[i] + ": " : "";
      if (!s.points) return name + "no points";
      const skipped = [["NaN", s.nan], ["+Infinity", s.posinf], ["-Infinity", s.neginf]]
        .filter(([, n]) => n).map(([what, n]) => n.toLocaleString() + " " + what).join(", ");
      return name + s.x.length.toLocaleString() + " of " + s.points.toLocaleString() +
        " points drawn" + (s.x.length < s.points ? " (M4 over " + payload.width + " px)" : "") +
        "; min " + number(s.min[1]) + " at " + number(s.min[0]) +
        ", max " + number(s.max[1]) + " at " + number(s.max[0]) +
        (skipped ? "; not drawn: " + skipped : "");
    }).join(" · ");
  }

  function drawn() {
    if (!performance.getEntriesByName("mirror:first-chart").length) {
      performance.mark("mirror:first-chart");
    }
  }

  function makeChart(box, key, payload, width) {
    const info = box.querySelector(".info");
    const chart = { key, runs, overview: payload, payload, uplot: null, loading: null };
    const opts = {
      width,
      height: 260,
      title: key,
      scales: { x: { time: xKey === "_timestamp" } },
      series: [{ label: xKey }].concat(runs.map((r, i) => ({
        label: labels[i], stroke: palette[i % palette.length], width: 1, spanGaps: true,
      }))),
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { show: runs.length > 1 },
      axes: [{}, { size: 70, values: (u, ticks) => ticks.map(number) }],
      hooks: {
        draw: [drawn],
        setSelect: [(u) => {
          if (u.select.width < 3) return;
          const lo = u.posToVal(u.select.left, "x");
          const hi = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          chart.zoom(lo, hi);
        }],
      },
    };
    chart.show = (next) => {
      chart.payload = next;
      const parts = pick(next, key);
      chart.uplot.setData(toData(parts));
      info.textContent = describe(parts, next);
    };
    chart.zoom = (lo, hi) => {
      info.textContent = "loading the window…";
      chart.loading = fetchSeries([key], width, lo, hi).then(chart.show, (e) => {
        info.textContent = "cannot load the window: " + e.message;
      });
      return chart.loading;
    };
    chart.reset = () => chart.show(chart.overview);
    const parts = pick(payload, key);
    chart.uplot = new uPlot(opts, toData(parts), box.querySelector(".plot"));
    info.textContent = describe(parts, payload);
    box.querySelector(".reset").addEventListener("click", chart.reset);
    box.addEventListener("dblclick", chart.reset);
    charts.push(chart);
    pending -= 1;
    if (pending === 0) {
      performance.mark("mirror:charts-drawn");
      document.documentElement.dataset.charts = "drawn";
    }
  }

  const boxes = keys.map((key) => {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.key = key;
    box.innerHTML = '<div class="tools"><a href="#" class="reset">reset zoom</a></div>' +
      '<div class="plot"></div><div class="info">loading…</div>';
    box.querySelector(".reset").addEventListener("click", (e) => e.preventDefault());
    host.appendChild(box);
    return box;
  });
  const width = Math.max(200, Math.floor(boxes[0].clientWidth - 16));
  fetchSeries(keys, width).then((payload) => {
    keys.forEach((key, i) => makeChart(boxes[i], key, payload, width));
  }, (e) => {
    boxes.forEach((b) => { b.querySelector(".info").textContent = "cannot load: " + e.message; });
    document.documentElement.dataset.charts = "failed";
  });
})();
