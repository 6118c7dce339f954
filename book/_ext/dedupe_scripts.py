"""Sphinx extension: drop repeated ``<script>`` entries from every page.

sphinx-thebe (loaded by Jupyter Book) registers its inline configuration script once per
reading pass, so a page can get ``const THEBE_JS_URL = ...`` twice, which throws in the
browser ("Identifier 'THEBE_JS_URL' has already been declared"). Identical scripts are kept
once, in their first position.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # An inline script comes as filename None or "" (two registrations): same script.
        attrs = getattr(script, "attributes", {})
        key = (getattr(script, "filename", str(script)) or "", repr(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    """Register the page-context hook (early: a handler returning a template stops the rest)."""
    app.connect("html-page-context", _dedupe, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
