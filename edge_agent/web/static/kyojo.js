// Kyojo household page: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var token = meta ? meta.getAttribute("content") : "";
  // htmx requests carry the session's CSRF token as a header (forms also carry it as a hidden field).
  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = token;
  });
  // <form data-confirm="..."> asks before it is sent (withdrawing a consent, removing a person).
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      evt.preventDefault();
    }
  }, true);
})();
