// Engine tabs in code panes: one pane visible at a time. No network, no dependencies.
(function () {
  function activate(anchor, index) {
    anchor.querySelectorAll(".st-tab").forEach(function (tab) {
      tab.classList.toggle("st-active", tab.dataset.pane === index);
      tab.setAttribute("aria-selected", tab.dataset.pane === index ? "true" : "false");
    });
    anchor.querySelectorAll(".st-pane").forEach(function (pane) {
      pane.classList.toggle("st-active", pane.dataset.pane === index);
    });
  }
  function init() {
    document.querySelectorAll(".st-anchor").forEach(function (anchor) {
      anchor.querySelectorAll(".st-tab").forEach(function (tab) {
        tab.addEventListener("click", function () { activate(anchor, tab.dataset.pane); });
      });
    });
    document.documentElement.dataset.servetrace = "ready";
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
