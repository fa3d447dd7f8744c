// Checking what the domain signs, in the browser: C2SP signed-note checkpoints with Ed25519
// (WebCrypto) and RFC 9162 consistency proofs (SHA-256 from WebCrypto). The same formats as
// crates/veil-audit (note.rs, proof.rs) and crates/veil-merkle.

const ALG_ED25519 = 1;
const te = new TextEncoder();

export class VerificationError extends Error {}

function b64(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) throw new VerificationError('not base64');
  const bin = atob(text);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''); }
function unhex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new VerificationError(`\`${text}\` is not hex`);
  return Uint8Array.from(text.match(/../g) || [], (x) => parseInt(x, 16));
}
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

async function sha256(...parts) {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', all));
}

/** A verifier key as `veil` prints it: `<name>+<hex key id>+<base64(0x01 || key)>`. */
export async function parseKey(text) {
  const parts = text.trim().split('+');
  if (parts.length < 3) throw new VerificationError('a public key is `<name>+<hex key id>+<base64 key>`');
  const [name, idHex] = parts;
  const blob = b64(parts.slice(2).join('+'));
  if (blob.length !== 33 || blob[0] !== ALG_ED25519) throw new VerificationError('not an Ed25519 key');
  const raw = blob.slice(1);
  const id = (await sha256(te.encode(`${name}\n`), Uint8Array.of(ALG_ED25519), raw)).slice(0, 4);
  if (hex(id) !== idHex) throw new VerificationError('the key id does not match the key');
  const key = await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']);
  return { name, id, key, fingerprint: `SHA256:${hex(await sha256(raw))}` };
}

/** Parses a signed checkpoint and checks the key's signature: {origin, size, root}. */
export async function verifyCheckpoint(note, key) {
  const cut = note.indexOf('\n\n');
  if (cut < 0) throw new VerificationError('not a signed note');
  const body = `${note.slice(0, cut)}\n`;
  const lines = body.split('\n').slice(0, -1);
  if (lines.length !== 3) throw new VerificationError('a checkpoint body has origin, size and root lines');
  const [origin, sizeText, rootText] = lines;
  if (!/^[0-9]+$/.test(sizeText)) throw new VerificationError('the size is not a number');
  let root;
  try { root = b64(rootText); } catch { root = new Uint8Array(); }
  if (root.length !== 32) throw new VerificationError('the root is not a base64 SHA-256 hash');
  let verified = false;
  for (const line of note.slice(cut + 2).split('\n')) {
    if (!line.startsWith('\u2014 ')) continue;
    const [name, blobText] = line.slice(2).split(' ');
    let blob;
    try { blob = b64(blobText || ''); } catch { continue; }
    if (name === key.name && blob.length === 68 && equal(blob.slice(0, 4), key.id)) {
      verified = await crypto.subtle.verify('Ed25519', key.key, blob.slice(4), te.encode(body));
    }
  }
  if (!verified) throw new VerificationError('the signature is not valid for this public key');
  return { origin, size: Number(sizeText), root };
}

const node = (l, r) => sha256(Uint8Array.of(1), l, r);

/** RFC 9162 §2.1.4.2. Requires 0 < m ≤ n. */
export async function consistent(m, n, pathHex, oldRoot, newRoot) {
  if (!(m > 0 && m <= n)) return false;
  let path = pathHex.map(unhex);
  if (m === n) return path.length === 0 && equal(oldRoot, newRoot);
  if ((m & (m - 1)) === 0) path = [oldRoot, ...path];
  if (path.length === 0) return false;
  let fn = m - 1, sn = n - 1;
  while (fn & 1) { fn >>= 1; sn >>= 1; }
  let fr = path[0], sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if ((fn & 1) || fn === sn) {
      fr = await node(c, fr);
      sr = await node(c, sr);
      if (!(fn & 1)) while (fn && !(fn & 1)) { fn >>= 1; sn >>= 1; }
    } else {
      sr = await node(sr, c);
    }
    fn >>= 1; sn >>= 1;
  }
  return sn === 0 && equal(fr, oldRoot) && equal(sr, newRoot);
}

export { hex };
