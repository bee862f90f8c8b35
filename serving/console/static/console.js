// opsloop console: live blocks and busy buttons. Written here; nothing is fetched from elsewhere.
"use strict";

// Blocks marked data-live="SECONDS" (each with an id) are refreshed from the same page every
// SECONDS while the tab is visible: the page is fetched again and the block's markup swapped.
(function live() {
  const blocks = Array.from(document.querySelectorAll("[data-live][id]"));
  if (!blocks.length) return;
  const every = Math.max(1, Math.min(...blocks.map((b) => Number(b.dataset.live) || 5)));
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { "X-Console-Live": "1" },
      });
      if (response.redirected || !response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const block of blocks) {
        const next = fresh.getElementById(block.id);
        if (next && next.innerHTML !== block.innerHTML && !block.contains(document.activeElement)) {
          block.innerHTML = next.innerHTML;
        }
      }
      const stamp = document.getElementById("live-stamp");
      if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      // the server restarting or the network gone: try again on the next tick
    } finally {
      busy = false;
    }
  }
  window.setInterval(refresh, every * 1000);
})();

// A form whose work takes a while (a chat request runs a plan) shows that it is working.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const button = event.submitter;
  if (button && form.dataset.busy) {
    button.disabled = true;
    // A disabled button is not submitted: keep its name and value in the form.
    if (button.name) {
      const hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = button.name;
      hidden.value = button.value;
      form.appendChild(hidden);
    }
    button.textContent = form.dataset.busy;
  }
});
