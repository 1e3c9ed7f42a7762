// pgq dashboard: the only script. Two jobs, no framework:
// 1. live refresh: a <main data-refresh="N"> is re-fetched every N seconds with the
//    X-PGQ-Partial header (the server answers with the page's live block only) and
//    swapped in, unless the operator is typing in it or the tab is hidden;
// 2. confirmation: a form with data-confirm asks before it posts.
"use strict";
(function () {
  function busy(live) {
    var active = document.activeElement;
    return (active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) ||
      live.querySelector("details[open]") !== null;
  }
  function refresh(live) {
    if (document.hidden || busy(live)) return;
    fetch(window.location.href, {headers: {"X-PGQ-Partial": "1"}, credentials: "same-origin"})
      .then(function (response) {
        if (response.redirected || response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && !busy(live)) {
          live.innerHTML = html;
          live.dispatchEvent(new CustomEvent("pgq:refreshed"));
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelector("main[data-refresh]");
    if (live) {
      var seconds = Math.max(1, parseFloat(live.getAttribute("data-refresh")) || 5);
      window.setInterval(function () { refresh(live); }, seconds * 1000);
    }
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
