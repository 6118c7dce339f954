// The widget manager (widgets/embed-amd.js) loads its icon fonts from the directory require.js
// resolves its module id to, which by default is relative to the page (wrong below the book's
// root): map that id to the directory the fonts were copied to, next to this file.
require.config({
  paths: {
    "@jupyter-widgets/html-manager/dist": new URL("widgets", document.currentScript.src).href,
  },
});
