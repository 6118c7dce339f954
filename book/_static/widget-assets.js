// Loaded after require.js and before the widget manager (widgets/embed-amd.js).

// 1. The widget bundles load their icon fonts from the directory require.js resolves their
// module ids to (@jupyter-widgets/html-manager/dist/..., @jupyter-widgets/controls, ...), by
// default relative to the page, which is wrong below the book's root: map those ids to the
// directory the fonts were copied to, next to this file.
(function () {
  const fonts = new URL("widgets", document.currentScript.src).href;
  require.config({
    paths: { "@jupyter-widgets/html-manager/dist": fonts, "@jupyter-widgets": fonts },
  });
})();

// 2. The widget manager typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the
// book loads MathJax 3. Give it that one call: labels are queued until MathJax 3 is ready.
(function () {
  const config = window.MathJax;
  if (!config || config.version) return;
  const pending = [];
  config.Hub = { Queue: (job) => pending.push(job[2]) };
  config.startup = Object.assign(config.startup || {}, {
    ready() {
      MathJax.startup.defaultReady();
      MathJax.Hub = { Queue: (job) => MathJax.typesetPromise([job[2]]) };
      if (pending.length) MathJax.typesetPromise(pending.splice(0));
    },
  });
})();
