// Interval charts as inline SVG: one row per group, the released value as a dot and its 95%
// interval as a bar — the error bars a release must be read with.
import { svg, num } from './dom.js';

/** rows: [{label, value, low, high}] → an SVG chart titled `title`. */
export function intervalChart(title, rows) {
  const width = 560, left = 150, right = 20, rowH = 26, top = 24;
  const height = top + rows.length * rowH + 30;
  const finite = rows.flatMap((r) => [r.low ?? r.value, r.high ?? r.value]).filter(Number.isFinite);
  let lo = Math.min(...finite, 0), hi = Math.max(...finite, 0);
  if (lo === hi) hi = lo + 1;
  const x = (v) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const chart = svg('svg', { class: 'chart', role: 'img', 'aria-label': `${title}: value and 95% interval per group`, viewBox: `0 0 ${width} ${height}`, width, height });
  chart.append(svg('title', {}, `${title} with 95% intervals`));
  chart.append(svg('text', { x: left, y: 14 }, `${title} (dot: released value; bar: 95% interval)`));
  rows.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    chart.append(svg('line', { class: 'grid', x1: left, x2: width - right, y1: y, y2: y }));
    chart.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, r.label));
    if (Number.isFinite(r.low) && Number.isFinite(r.high)) {
      chart.append(svg('line', { class: 'bar', x1: x(r.low), x2: x(r.high), y1: y, y2: y }));
      for (const end of [r.low, r.high]) chart.append(svg('line', { class: 'bar', x1: x(end), x2: x(end), y1: y - 5, y2: y + 5 }));
    }
    if (Number.isFinite(r.value)) chart.append(svg('circle', { class: 'point', cx: x(r.value), cy: y, r: 4 }, svg('title', {}, `${r.label}: ${num(r.value)} [${num(r.low)}, ${num(r.high)}]`)));
  });
  const axisY = top + rows.length * rowH + 8;
  chart.append(svg('line', { class: 'axis', x1: left, x2: width - right, y1: axisY, y2: axisY }));
  for (const v of [lo, (lo + hi) / 2, hi]) chart.append(svg('text', { x: x(v), y: axisY + 14, 'text-anchor': 'middle' }, num(v, 1)));
  return chart;
}

/** series: [{name, points: [[time, value]]}] → a step chart of cumulative values over time. */
export function timeChart(title, series, unit) {
  const width = 560, left = 60, right = 150, top = 24, plotH = 160;
  const height = top + plotH + 40;
  const times = series.flatMap((s) => s.points.map((p) => Date.parse(p[0])));
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  if (!times.length) return svg('svg', { role: 'img', 'aria-label': `${title}: nothing yet`, width: 1, height: 1 });
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (t0 === t1) { t0 -= 60000; t1 += 60000; }
  const vmax = Math.max(...values, 1e-9);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + plotH - (v / vmax) * plotH;
  const chart = svg('svg', { class: 'chart', role: 'img', 'aria-label': title, viewBox: `0 0 ${width} ${height}`, width, height });
  chart.append(svg('text', { x: left, y: 14 }, title));
  chart.append(svg('line', { class: 'axis', x1: left, x2: left, y1: top, y2: top + plotH }));
  chart.append(svg('line', { class: 'axis', x1: left, x2: width - right, y1: top + plotH, y2: top + plotH }));
  chart.append(svg('text', { x: left - 6, y: top + 4, 'text-anchor': 'end' }, `${num(vmax)} ${unit}`));
  chart.append(svg('text', { x: left, y: top + plotH + 16 }, new Date(t0).toISOString().slice(0, 16).replace('T', ' ')));
  chart.append(svg('text', { x: width - right, y: top + plotH + 16, 'text-anchor': 'end' }, new Date(t1).toISOString().slice(0, 16).replace('T', ' ')));
  const shades = ['#0b4f9c', '#a40e26', '#116329', '#7a4400', '#5b2a86', '#00606b'];
  series.forEach((s, i) => {
    let d = `M ${x(t0)} ${y(0)}`;
    for (const [t, v] of s.points) d += ` H ${x(Date.parse(t))} V ${y(v)}`;
    d += ` H ${x(t1)}`;
    const colour = shades[i % shades.length];
    chart.append(svg('path', { d, fill: 'none', stroke: colour, 'stroke-width': 2 }, svg('title', {}, s.name)));
    chart.append(svg('text', { x: width - right + 6, y: top + 12 + i * 14, fill: colour }, s.name));
  });
  return chart;
}
