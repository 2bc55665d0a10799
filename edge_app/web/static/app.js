// Polls the kiosk's state and refreshes the camera view. No external assets, no frameworks.
"use strict";

const POLL_MS = 250;
const FRAME_MS = 200;

function text(id, value) {
  document.getElementById(id).textContent = value;
}

// How prices are shown (the kiosk config's web.currency / web.locale), read once at start.
let priceFormat = null;

async function loadDisplay() {
  try {
    const response = await fetch("/api/display", {cache: "no-store"});
    const display = response.ok ? await response.json() : {};
    if (display.currency) {
      priceFormat = new Intl.NumberFormat(display.locale || undefined, {style: "currency", currency: display.currency});
    }
  } catch (err) {
    priceFormat = null;  // a bare number is still a price the shopper can read
  }
}

function formatPrice(price) {
  if (typeof price !== "number") return "";
  return priceFormat ? priceFormat.format(price) : price.toFixed(2);
}

function render(state) {
  const card = document.getElementById("card");
  const message = document.getElementById("message");
  document.body.dataset.decision = state.decision;
  if (state.decision === "product" && state.product) {
    const p = state.product;
    card.classList.remove("hidden");
    message.classList.add("hidden");
    if (card.dataset.productId !== p.product_id) {
      card.dataset.productId = p.product_id;
      const thumb = document.getElementById("thumb");
      thumb.style.visibility = "hidden";
      thumb.onload = () => { thumb.style.visibility = "visible"; };
      thumb.src = "/api/thumbnail/" + encodeURIComponent(p.product_id);
    }
    text("product-name", p.name || p.product_id);
    text("product-price", formatPrice(p.price));
    text("product-description", p.description || "");
    const pct = Math.round(100 * state.confidence);
    document.getElementById("confidence-bar").style.width = pct + "%";
    text("confidence-text", "confidence " + pct + "%");
  } else {
    card.classList.add("hidden");
    card.dataset.productId = "";
    message.classList.remove("hidden");
    message.textContent = state.message;
  }
  const list = document.getElementById("alternatives");
  list.replaceChildren(...state.alternatives.map((alt) => {
    const item = document.createElement("li");
    item.textContent = (alt.name || alt.product_id) + " — " + Math.round(100 * alt.confidence) + "%";
    return item;
  }));
  // An empty "Also possible" heading reads like a broken page.
  document.getElementById("alternatives-title").classList.toggle("hidden", state.alternatives.length === 0);
  showTeachForm();
  const camera = state.camera;
  if (camera && !camera.connected) {
    text("status", "Camera not connected, retrying… " + (camera.error || ""));
  } else {
    text("status", state.fps.toFixed(1) + " fps · frame " + state.frame_index);
  }
}

// Staff mode: the CSRF token of this page's staff session, kept in memory only (a reload logs out).
let csrfToken = null;

function setStaffMode(token) {
  csrfToken = token;
  document.getElementById("staff-login").classList.add("hidden");
  document.getElementById("staff-button").classList.toggle("hidden", token !== null);
  document.getElementById("staff-logout").classList.toggle("hidden", token === null);
  showTeachForm();
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  const status = document.getElementById("staff-status");
  try {
    const response = await fetch("/api/staff/login", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({pin: form.elements.pin.value}),
    });
    const body = await response.json();
    form.reset();
    if (!response.ok) {
      status.textContent = body.error;
      return;
    }
    status.textContent = "";
    setStaffMode(body.csrf_token);
  } catch (err) {
    status.textContent = "kiosk not reachable";
  }
}

async function logout() {
  if (csrfToken !== null) {
    await fetch("/api/staff/logout", {method: "POST", headers: {"X-CSRF-Token": csrfToken}}).catch(() => null);
  }
  setStaffMode(null);
}

// The teach form is staff-only: shown only while this page holds a staff session.
function showTeachForm() {
  document.getElementById("teach").classList.toggle("hidden", csrfToken === null);
}

async function teach(event) {
  event.preventDefault();
  const form = event.target;
  const fields = Object.fromEntries(new FormData(form).entries());
  const status = document.getElementById("teach-status");
  status.textContent = "Saving…";
  try {
    const response = await fetch("/api/teach", {
      method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken},
      body: JSON.stringify(fields),
    });
    const body = await response.json();
    if (response.status === 401) {
      setStaffMode(null);  // the session ended (idle or kiosk restart): log in again
      status.textContent = "";
      document.getElementById("staff-status").textContent = "Staff session ended; log in again";
      return;
    }
    if (!response.ok) {
      status.textContent = "Not saved: " + body.error;
      return;
    }
    status.textContent = "Saved " + body.product_id + " from " + body.references + " frames" +
      (body.sent_to_hq ? "; sent to HQ for approval" : "");
    form.reset();
    document.activeElement.blur();
  } catch (err) {
    status.textContent = "kiosk not reachable";
  }
}

async function poll() {
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (err) {
    text("status", "kiosk not reachable");
  }
  setTimeout(poll, POLL_MS);
}

function refreshFrame() {
  const img = document.getElementById("frame");
  const next = new Image();
  next.onload = () => { img.src = next.src; setTimeout(refreshFrame, FRAME_MS); };
  next.onerror = () => setTimeout(refreshFrame, 1000);
  next.src = "/api/frame.jpg?t=" + Date.now();
}

document.getElementById("teach").addEventListener("submit", teach);
document.getElementById("staff-login").addEventListener("submit", login);
document.getElementById("staff-logout").addEventListener("click", logout);
document.getElementById("staff-button").addEventListener("click", () => {
  document.getElementById("staff-login").classList.remove("hidden");
  document.getElementById("staff-pin").focus();
});
loadDisplay().finally(poll);
refreshFrame();
