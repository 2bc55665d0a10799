// The kiosk's screen: polls /api/state, shows the shopper what the camera sees, and staff mode. No external
// assets, no frameworks. Every visible string comes from the message catalog, /static/i18n/<language>.json.
"use strict";

const POLL_MS = 250;
const FRAME_MS = 200;
// A poll that takes longer than this is given up (AbortController), and the screen says "out of order" once
// no poll has been answered for STALE_MS: a dead or hung backend shows within 2 s, not the last price forever.
const REQUEST_TIMEOUT_MS = 1000;
const STALE_MS = 1200;
const PICK_MS = 20000;  // how long a card the shopper tapped stays when nothing else happens
const LANGUAGES = ["en", "sv"];
// Problems that stop the kiosk serving shoppers; sync being away only delays catalog updates.
const SHOPPER_COMPONENTS = ["camera", "catalog", "recognition"];

// ------------------------------------------------------------------ message catalog

let messages = {};
let fallback = {};

async function fetchJson(url, timeoutMs = REQUEST_TIMEOUT_MS, options = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(url, {cache: "no-store", ...options, signal: controller.signal});
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;  // an answer that is not JSON (a proxy's error page): the status still tells
    }
    return {response, body};
  } finally {
    clearTimeout(timer);
  }
}

async function loadCatalog(language) {
  const {response, body} = await fetchJson("/static/i18n/" + language + ".json", 5000);
  if (!response.ok || body === null || typeof body !== "object") throw new Error("no catalog for " + language);
  return body;
}

// The text for `key`, with {name} placeholders filled from `values`; the English text when the chosen
// catalog lacks the key, and the key itself when both do (a visible gap, not an empty screen).
function t(key, values = {}) {
  const template = messages[key] ?? fallback[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
}

function translatePage() {
  document.documentElement.lang = document.body.dataset.language || "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-alt]")) el.alt = t(el.dataset.i18nAlt);
  for (const el of document.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
}

// How prices are shown (the kiosk config's web.currency / web.locale), read once at start.
let priceFormat = null;

async function loadDisplay() {
  let display = {};
  try {
    const {response, body} = await fetchJson("/api/display", 5000);
    if (response.ok && body) display = body;
  } catch (err) {
    display = {};  // the first poll will say whether the kiosk is there at all
  }
  const language = LANGUAGES.includes(display.language) ? display.language : "en";
  document.body.dataset.language = language;
  try {
    fallback = await loadCatalog("en");
    messages = language === "en" ? fallback : await loadCatalog(language);
  } catch (err) {
    messages = fallback;
  }
  try {
    if (display.currency) {
      const locale = display.locale || (language === "sv" ? "sv-SE" : undefined);
      priceFormat = new Intl.NumberFormat(locale, {style: "currency", currency: display.currency});
    }
  } catch (err) {
    priceFormat = null;  // a bare number is still a price the shopper can read
  }
  translatePage();
}

function formatPrice(price) {
  if (typeof price !== "number") return "";
  return priceFormat ? priceFormat.format(price) : price.toFixed(2);
}

// ------------------------------------------------------------------ the shopper's screen

function byId(id) {
  return document.getElementById(id);
}

function show(id, visible) {
  byId(id).classList.toggle("hidden", !visible);
}

let lastState = null;
let picked = null;  // {product, key, until}: an alternative the shopper tapped
let announced = "";

function announcementKey(state) {
  return state.decision + ":" + (state.product ? state.product.product_id : "");
}

function setThumb(img, product) {
  const url = product.thumbnail_url;
  if (img.dataset.src === (url || "")) return;
  img.dataset.src = url || "";
  img.classList.add("missing");
  img.onload = () => img.classList.remove("missing");
  img.onerror = () => img.classList.add("missing");
  if (url) img.src = url; else img.removeAttribute("src");
}

function showCard(product, chosen) {
  const card = byId("card");
  card.dataset.productId = product.product_id;
  setThumb(byId("thumb"), product);
  byId("product-name").textContent = product.name || product.product_id;
  byId("product-price").textContent = typeof product.price === "number" ? formatPrice(product.price) : t("price.ask");
  byId("product-description").textContent = product.description || "";
  show("card-note", chosen);
  show("card", true);
}

function staffFigures(confidence) {
  return t("staff.confidence", {percent: Math.round(100 * confidence)});
}

function renderAlternatives(state) {
  const alternatives = Array.isArray(state.alternatives) ? state.alternatives.slice(0, 3) : [];
  const list = byId("alternatives");
  const shownId = picked ? picked.product.product_id : null;
  // With a tapped card showing, the kiosk's own answer becomes one of the cards (the way back to it).
  const answer = picked && state.decision === "product" && state.product ? [state.product] : [];
  const rows = answer.concat(alternatives).filter((alt) => alt.product_id !== shownId).slice(0, 3);
  const signature = rows.map((alt) => alt.product_id).join("\n") + "|" + document.body.dataset.mode;
  if (list.dataset.signature !== signature) {
    list.dataset.signature = signature;
    list.replaceChildren(...rows.map((alt) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "alt";
      button.dataset.productId = alt.product_id;
      const img = document.createElement("img");
      img.alt = "";
      img.className = "alt-thumb";
      setThumb(img, alt);
      const name = document.createElement("span");
      name.className = "alt-name";
      name.textContent = alt.name || alt.product_id;
      const price = document.createElement("span");
      price.className = "alt-price";
      price.textContent = formatPrice(alt.price);
      button.append(img, name, price);
      if (csrfToken !== null && typeof alt.confidence === "number") {
        const figure = document.createElement("span");
        figure.className = "alt-figure";
        figure.textContent = staffFigures(alt.confidence);
        button.append(figure);
      }
      button.setAttribute("aria-label", t("alternatives.show", {name: alt.name || alt.product_id}));
      button.addEventListener("click", () => pick(alt));
      item.append(button);
      return item;
    }));
  }
  const title = state.decision === "unknown" && !picked ? "alternatives.unknown" : "alternatives.product";
  byId("alternatives-title").textContent = t(title);
  show("alternatives-box", rows.length > 0);  // an empty "Also possible" heading reads like a broken page
}

function pick(product, note = "card.chosen") {
  if (lastState === null) return;
  picked = {product, note, key: announcementKey(lastState), until: Date.now() + PICK_MS};
  render(lastState);
  announceProduct(product);
}

// A barcode scanner is a keyboard: it types the code and Enter within a fraction of a second. Such a
// burst outside the staff form is looked up (GET /api/products/CODE: id or barcode attribute) and its
// card shown like a tapped one; a person typing is slower than SCAN_GAP_MS between keys and is ignored.
const SCAN_GAP_MS = 60;
const SCAN_MIN = 4;
const SCAN_MAX = 64;
const SCAN_MISS_MS = 5000;  // how long "no product has this barcode" stays while nothing is announced
let scanMiss = 0;
let scanBuffer = "";
let scanLastKey = 0;

function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
  const now = performance.now();
  if (now - scanLastKey > SCAN_GAP_MS) scanBuffer = "";
  scanLastKey = now;
  if (event.key === "Enter") {
    const code = scanBuffer;
    scanBuffer = "";
    if (code.length >= SCAN_MIN) lookUp(code);
  } else if (event.key.length === 1 && scanBuffer.length < SCAN_MAX) {
    scanBuffer += event.key;
  }
}

async function lookUp(code) {
  try {
    const {response, body} = await fetchJson("/api/products/" + encodeURIComponent(code));
    if (response.ok && body && body.product_id) {
      pick(body, "card.scanned");
      return;
    }
  } catch (err) {
    // not reachable: the poll shows "out of order" if it lasts
  }
  picked = null;
  scanMiss = Date.now() + SCAN_MISS_MS;
  if (lastState !== null) render(lastState);
}

function announceProduct(product) {
  const name = product.name || product.product_id;
  announce(typeof product.price === "number" ? t("announce.product", {name, price: formatPrice(product.price)}) : name);
}

function announce(text) {
  if (text !== announced) {
    announced = text;
    byId("announcer").textContent = text;
  }
}

function problemText(problems) {
  const components = problems.map((p) => p.component).filter((c, i, all) => all.indexOf(c) === i);
  return components.map((c) => t("ooo." + (SHOPPER_COMPONENTS.includes(c) ? c : "other"))).join(" ");
}

function setScreen(screen, reason) {
  document.body.dataset.screen = screen;
  const broken = screen === "out-of-order";
  show("out-of-order", broken);
  byId("screen").setAttribute("aria-hidden", broken ? "true" : "false");
  if (broken) {
    byId("ooo-reason").textContent = reason;
    announce(t("ooo.title") + ". " + reason);
  }
}

function render(state) {
  lastState = state;
  const status = state.status || {ok: true, problems: []};
  const problems = Array.isArray(status.problems) ? status.problems : [];
  const blocking = problems.filter((p) => !status.ok && p.down && p.component !== "sync");
  renderDiagnostics(state, problems);
  if (!status.ok && (blocking.length > 0 || problems.length === 0)) {
    setScreen("out-of-order", problemText(blocking.length > 0 ? blocking : [{component: "other"}]));
    return;
  }
  setScreen("ok");
  const key = announcementKey(state);
  if (picked && (picked.key !== key || Date.now() > picked.until)) picked = null;
  document.body.dataset.decision = state.decision;
  if (picked) {
    showCard(picked.product, true);
    byId("card-note").textContent = t(picked.note);
    show("message", false);
  } else if (state.decision === "product" && state.product) {
    showCard(state.product, false);
    show("message", false);
    announceProduct(state.product);
  } else {
    show("card", false);
    byId("card").dataset.productId = "";
    show("message", true);
    const unknown = state.decision === "unknown";
    const missed = Date.now() < scanMiss;
    const title = missed ? "scan.not_found" : unknown ? "unknown.title" : "prompt.show";
    byId("message-title").textContent = t(title);
    byId("message-hint").textContent = unknown || missed ? t("unknown.hint") : "";
    show("message-hint", unknown || missed);
    announce(unknown || missed ? t(title) + ". " + t("unknown.hint") : t(title));
  }
  const confidence = typeof state.confidence === "number" ? state.confidence : 0;
  byId("product-confidence").textContent = state.decision === "product" && !picked ? staffFigures(confidence) : "";
  renderAlternatives(state);
}

// Staff mode only: the figures a developer or technician wants (the API sends them only to staff sessions).
function renderDiagnostics(state, problems) {
  const d = state.diagnostics;
  const parts = [];
  if (csrfToken === null) {
    byId("diagnostics").textContent = "";  // a shopper's screen holds none of it, not even hidden
    return;
  }
  if (d) {
    parts.push(t("staff.diagnostics", {
      fps: typeof d.fps === "number" ? d.fps.toFixed(1) : "?",
      frame: d.frame_index ?? "?",
      votes: d.votes ?? "?",
      window: d.window ?? "?",
    }));
  }
  for (const p of problems) parts.push(p.component + ": " + p.reason);
  byId("diagnostics").textContent = parts.join(" · ");
}

let lastAnswer = performance.now();

async function poll() {
  try {
    const {response, body} = await fetchJson("/api/state");
    if (response.ok && body) {
      lastAnswer = performance.now();
      render(body);
    } else {
      noAnswer();
    }
  } catch (err) {
    noAnswer();  // refused, reset or timed out
  }
  setTimeout(poll, POLL_MS);
}

function noAnswer() {
  if (performance.now() - lastAnswer > STALE_MS) setScreen("out-of-order", t("ooo.backend"));
}

function refreshFrame() {
  const img = byId("frame");
  const next = new Image();
  next.onload = () => {
    img.src = next.src;
    img.classList.remove("missing");
    setTimeout(refreshFrame, FRAME_MS);
  };
  next.onerror = () => {
    img.classList.add("missing");  // no frame (yet): an empty box, not a broken-image icon
    setTimeout(refreshFrame, 1000);
  };
  next.src = "/api/frame.jpg?t=" + Date.now();
}

// ------------------------------------------------------------------ staff mode

// The CSRF token of this page's staff session, kept in memory only (a reload logs out).
let csrfToken = null;
let lastTaught = null;
let confirmSimilar = false;

function setStaffMode(token) {
  csrfToken = token;
  document.body.dataset.mode = token === null ? "shopper" : "staff";
  show("staff-login", false);
  show("teach", token !== null);
  show("staff-panel", token !== null);
  show("staff-button", token === null);
  if (token === null) {
    lastTaught = null;
    show("teach-undo", false);
    resetSimilar();
  }
  byId("alternatives").dataset.signature = "";  // staff see the figures on the cards
  if (lastState !== null) render(lastState);
}

function openLogin() {
  show("staff-panel", true);
  show("staff-login", true);
  show("staff-button", false);
  byId("staff-status").textContent = "";
  byId("staff-pin").focus();
}

function closeLogin() {
  byId("staff-login").reset();
  show("staff-login", false);
  show("staff-panel", csrfToken !== null);
  show("staff-button", csrfToken === null);
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  const status = byId("staff-status");
  try {
    const {response, body} = await fetchJson("/api/staff/login", 10000, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({pin: form.elements.pin.value}),
    });
    form.reset();
    if (response.ok && body && body.csrf_token) {
      status.textContent = "";
      setStaffMode(body.csrf_token);
      return;
    }
    const reasons = {401: "staff.wrong_pin", 403: "staff.no_pin", 429: "staff.too_many"};
    status.textContent = reasons[response.status] ? t(reasons[response.status]) : t("error.failed");
  } catch (err) {
    status.textContent = t("error.unreachable");
  }
}

async function logout() {
  if (csrfToken !== null) {
    await fetchJson("/api/staff/logout", 5000, {method: "POST", headers: {"X-CSRF-Token": csrfToken}}).catch(() => null);
  }
  byId("teach").reset();
  byId("teach-status").textContent = "";
  setStaffMode(null);
}

function sessionEnded() {
  setStaffMode(null);
  openLogin();
  byId("staff-status").textContent = t("staff.session_ended");
}

function resetSimilar() {
  confirmSimilar = false;
  show("similar", false);
}

function teachFields(form) {
  const fields = {};
  for (const [key, value] of new FormData(form).entries()) {
    const text = String(value).trim();
    if (text !== "") fields[key] = text;
  }
  if ("price" in fields) fields.price = fields.price.replace(",", ".");  // "2,40" as typed in Sweden
  if ("add_to_existing" in fields) fields.add_to_existing = true;
  if (confirmSimilar) fields.confirm_similar = true;  // only when the clerk said so: older kiosks refuse the key
  return fields;
}

async function teach(event) {
  if (event) event.preventDefault();
  const form = byId("teach");
  const status = byId("teach-status");
  status.textContent = t("teach.saving");
  show("teach-undo", false);
  try {
    const {response, body} = await fetchJson("/api/teach", 30000, {
      method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken},
      body: JSON.stringify(teachFields(form)),
    });
    if (response.status === 401) {
      status.textContent = "";
      sessionEnded();  // the session ended (idle or kiosk restart): log in again
      return;
    }
    if (response.status === 409 && body && body.similar) {
      confirmSimilar = true;
      byId("similar-text").textContent = t("teach.similar", {name: body.similar.name || body.similar.product_id});
      show("similar", true);
      status.textContent = "";
      byId("similar-save").focus();
      return;
    }
    resetSimilar();
    if (!response.ok || !body) {
      const reason = response.status === 429 ? t("teach.too_many") : (body && body.error) || t("error.failed");
      status.textContent = t("teach.not_saved", {reason});
      return;
    }
    status.textContent = t(body.sent_to_hq ? "teach.saved_sent" : "teach.saved", {
      id: body.product_id, frames: body.references,
    });
    lastTaught = body.product_id;
    show("teach-undo", true);
    form.reset();
    document.activeElement.blur();
  } catch (err) {
    status.textContent = t("error.unreachable");
  }
}

async function undo() {
  if (lastTaught === null) return;
  const status = byId("teach-status");
  try {
    const {response, body} = await fetchJson("/api/teach/undo", 30000, {
      method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken},
      body: JSON.stringify({product_id: lastTaught}),
    });
    if (response.status === 401) {
      sessionEnded();
      return;
    }
    if (response.status === 404) {
      status.textContent = t("teach.nothing_to_undo");
    } else if (response.ok && body) {
      const done = body.removed_product
        ? t("teach.undone_product", {id: body.product_id})
        : t("teach.undone_views", {id: body.product_id, views: body.references_removed});
      // What became of the enrollment HQ was sent: the clerk must know when HQ still has to reject it.
      const hq = {"removed from outbox": "teach.hq_removed", "withdrawal queued": "teach.hq_withdrawn",
        "not withdrawn": "teach.hq_not_withdrawn"}[body.hq];
      status.textContent = hq ? done + ". " + t(hq) : done;
    } else {
      status.textContent = t("teach.not_undone", {reason: (body && body.error) || t("error.failed")});
      return;
    }
    lastTaught = null;
    show("teach-undo", false);
  } catch (err) {
    status.textContent = t("error.unreachable");
  }
}

// ------------------------------------------------------------------ start

byId("teach").addEventListener("submit", (event) => { resetSimilar(); teach(event); });
byId("similar-save").addEventListener("click", () => teach(null));
byId("similar-cancel").addEventListener("click", () => {
  resetSimilar();
  byId("teach-status").textContent = t("teach.cancelled");
});
byId("teach-undo").addEventListener("click", undo);
byId("staff-login").addEventListener("submit", login);
byId("staff-cancel").addEventListener("click", closeLogin);
byId("staff-logout").addEventListener("click", logout);
byId("staff-button").addEventListener("click", openLogin);
document.addEventListener("keydown", onKey);
document.body.dataset.staleMs = String(STALE_MS);
loadDisplay().finally(() => {
  lastAnswer = performance.now();  // the catalog load is not the backend's silence
  poll();
});
refreshFrame();
