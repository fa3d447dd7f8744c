// A line diff of two policy versions (longest common subsequence; policies are short).

/** [{op: ' ' | '+' | '-', line}] turning `a` into `b`. */
export function lineDiff(a, b) {
  const x = a.split('\n'), y = b.split('\n');
  const lcs = Array.from({ length: x.length + 1 }, () => new Array(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--)
    for (let j = y.length - 1; j >= 0; j--)
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) { out.push({ op: ' ', line: x[i] }); i++; j++; }
    else if (j < y.length && (i === x.length || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push({ op: '+', line: y[j] }); j++; }
    else { out.push({ op: '-', line: x[i] }); i++; }
  }
  return out;
}
