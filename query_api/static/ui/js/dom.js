// DOM helpers. Every value from the API goes in as text (textContent or a text
// node), never as HTML; the page's Content-Security-Policy allows scripts from
// this origin only.

export const $ = (id) => document.getElementById(id);

// h("a", { href, class, text, dataset, onclick }, ...children): an element.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function showAlert(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

let toastTimer = null;
export function toast(message, sticky = false) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  if (!sticky) toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

export const VIEWS = ["signin", "search", "history", "streams"];

export function showView(name) {
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
  document.body.dataset.view = name;
  for (const link of document.querySelectorAll(".pages a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

export function nearViewport(el) {
  const rect = el.getBoundingClientRect();
  return rect.top < window.innerHeight + 400 && !el.closest("[hidden]");
}

// Call load() when the sentinel comes within 400 px of the viewport.
export function observe(sentinelId, load) {
  if (!("IntersectionObserver" in window)) return;
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) load();
  }, { rootMargin: "400px 0px" }).observe($(sentinelId));
}
