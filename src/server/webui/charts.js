// Line charts on a <canvas>, drawn here (no chart library, nothing fetched): one or more series
// of recent values, oldest left, with the current value and the maximum written on the chart.

function cssVar(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

// series: [{values: number[], color: css color or var name, label}], opts: {points, max, format}
export function drawChart(canvas, series, opts = {}) {
  const points = opts.points || 120;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(50, canvas.clientWidth), h = Math.max(40, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const fmt = opts.format || ((v) => v.toFixed(1));
  let max = opts.max || 0;
  if (!opts.max) for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  if (!(max > 0)) max = 1;
  const top = 18, bottom = 6, plotH = h - top - bottom;
  // Grid: quarters.
  g.strokeStyle = cssVar("--line", "#ddd");
  g.lineWidth = 1;
  for (let q = 0; q <= 4; q++) {
    const y = Math.round(top + (plotH * q) / 4) + 0.5;
    g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
  }
  g.font = "11px system-ui, sans-serif";
  let x0 = 6;
  for (const s of series) {
    const color = s.color.startsWith("--") ? cssVar(s.color, "#2f6fde") : s.color;
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    const off = points - s.values.length;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const x = ((off + i) / (points - 1)) * w, y = top + plotH - (Math.min(v, max) / max) * plotH;
      if (pen) g.lineTo(x, y); else g.moveTo(x, y);
      pen = true;
    });
    g.stroke();
    const last = [...s.values].reverse().find((v) => v !== null && v !== undefined);
    const text = s.label + (last === undefined ? " –" : " " + fmt(last));
    g.fillStyle = color;
    g.fillText(text, x0, 12);
    x0 += g.measureText(text).width + 14;
  }
  g.fillStyle = cssVar("--muted", "#888");
  const mt = "max " + fmt(max);
  g.fillText(mt, w - g.measureText(mt).width - 6, 12);
}

// A fixed-length history of values.
export class Ring {
  constructor(n = 120) { this.n = n; this.values = []; }
  push(v) {
    this.values.push(v);
    if (this.values.length > this.n) this.values.shift();
  }
}
