// pgq dashboard: the only script. Two jobs, no framework:
// 1. live refresh: the page's <main id="live"> is re-fetched with the X-PGQ-Partial
//    header (the server answers with the page's live block only) and swapped in. The
//    block carries its own interval (<span data-refresh="N">, 0: none), read after each
//    swap, so a job page stops refreshing once its job has finished. The next fetch is
//    scheduled only when the previous one has ended: a slow server gets no pile-up, and
//    answers cannot land out of order. Nothing is swapped while the operator is using
//    the block: focus in a field, a field edited but not submitted, an open <details>.
// 2. confirmation: a form with data-confirm asks before it posts.
"use strict";
(function () {
  function edited(live) {
    var fields = live.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var field = fields[i];
      if (field.tagName === "SELECT") {
        for (var j = 0; j < field.options.length; j++) {
          if (field.options[j].selected !== field.options[j].defaultSelected) return true;
        }
      } else if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked !== field.defaultChecked) return true;
      } else if (field.type !== "hidden" && field.value !== field.defaultValue) {
        return true;
      }
    }
    return false;
  }
  function busy(live) {
    var active = document.activeElement;
    return (active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) ||
      live.querySelector("details[open]") !== null || edited(live);
  }
  function interval(live) {
    var marker = live.querySelector("[data-refresh]");
    var seconds = marker ? parseFloat(marker.getAttribute("data-refresh")) : 0;
    return seconds > 0 ? Math.max(1, seconds) : 0;
  }
  function schedule(live) {
    var seconds = interval(live);
    if (seconds) window.setTimeout(function () { refresh(live); }, seconds * 1000);
  }
  function refresh(live) {
    if (document.hidden || busy(live)) { schedule(live); return; }
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
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { schedule(live); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) schedule(live);
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
