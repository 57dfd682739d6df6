// Building the page's elements. Text from the server only ever enters the page as text
// (`textContent`, attribute values set one by one), never as markup, so a process name or an
// alert summary cannot inject anything.

/** A new `tag` element with `attributes` (`class`, `title`, `data-*`…) and `children`
 * (elements, or strings added as text). */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** The element with id `id`. */
export function byId(id) {
  return document.getElementById(id);
}

/** Replaces the children of `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== undefined && child !== null));
}

/** A definition list's terms and descriptions from `[term, description]` pairs. */
export function definitions(element, pairs) {
  fill(element, pairs.flatMap(([term, description]) => [el('dt', {}, term), el('dd', {}, description ?? '—')]));
}

/** A number with at most `digits` decimals (in powers of ten beyond a million: an anomaly
 * score far outside training can be huge), or '—'. */
export function number(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return '—';
  const n = Number(value);
  if (Math.abs(n) >= 1e6 && !Number.isInteger(n)) return n.toExponential(2);
  if (Math.abs(n) >= 1e9) return n.toExponential(2);
  return n.toLocaleString('en', { maximumFractionDigits: digits });
}

/** A time (RFC 3339 text, or Unix seconds) in the browser's locale, or '—'. */
export function time(value) {
  if (value === null || value === undefined) return '—';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}
