// beatleader dashboard: refresh the page's <main> in place every few seconds.
// The pages are plain HTML and work without this file (a <noscript> refresh reloads them).
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh-ms"), 10) || 2000;
  var busy = false;

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.getElementById("main");
    var where = doc.querySelector("header .where");
    var main = document.getElementById("main");
    if (!fresh || !main) return;
    main.replaceWith(fresh);
    var old = document.querySelector("header .where");
    if (where && old) old.replaceWith(where);
    body.setAttribute("data-refreshed", String(Date.now()));
  }

  function refresh() {
    if (busy || document.hidden) return;
    // keep a focused control (a button being pressed) in place
    var active = document.activeElement;
    if (active && active.form) return;
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.text(); })
      .then(swap)
      .catch(function () {
        var state = document.getElementById("zk-state");
        if (state) { state.textContent = "dashboard unreachable"; state.className = "zk down"; }
      })
      .then(function () { busy = false; });
  }

  body.setAttribute("data-live", "1");
  window.setInterval(refresh, every);
})();
