"""Griffe extension (mkdocs.yml, mkdocstrings `extensions:`): the package's docstrings
read well on the site as they are written for `help()` and doctest.

- `Example:` is taken as Google's `Examples:` section, so `>>>` lines render as code
  (otherwise Markdown reads them as nested quotes).
- A doctest written in the prose (`>>>` at the left margin, outside a section)
  becomes a `pycon` code block.
- Sphinx roles (:func:`name`, :class:`~pkg.Name`, ...) become links to the object's
  API page when it is a documented (public) object, else inline code.
"""

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")
EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
# docstring.value is dedented: column 0 is prose; sections' content is indented.
PROSE_DOCTEST = re.compile(r"^>>>.*(?:\n(?![ \t]*$).*)*", re.MULTILINE)


def _documented(obj) -> bool:
    """Whether the site renders `obj` at its own path (public all the way up)."""
    try:
        while obj is not None:
            # Undocumented members are not rendered (show_if_no_docstring: false).
            if obj.is_alias or not obj.is_public or (
                    not obj.is_module and not obj.docstring):
                return False
            obj = obj.parent
    except griffe.AliasResolutionError:
        return False
    return True


class SphinxRolesToLinks(griffe.Extension):
    def on_package(self, *, pkg, loader, **kwargs):
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj.docstring.value, obj, loader)

    @staticmethod
    def _rewrite(text, obj, loader):
        module = obj.module
        scopes = [o.path for o in (obj, obj.parent) if o is not None and o.is_class]
        scopes += [module.path, module.package.path, ""]

        def link(match):
            target = match["target"]
            label = target.rsplit(".", 1)[-1] if match["tilde"] else target
            for scope in scopes:
                path = f"{scope}.{target}" if scope else target
                try:
                    found = loader.modules_collection[path]
                    if found.is_alias:
                        found = found.final_target
                except (KeyError, ValueError, griffe.AliasResolutionError,
                        griffe.CyclicAliasError):
                    continue
                if _documented(found):
                    return f"[`{label}`][{found.path}]"
                break
            return f"`{label}`"

        text = EXAMPLE.sub(r"\g<indent>Examples:", text)
        text = PROSE_DOCTEST.sub(lambda m: f"\n```pycon\n{m[0]}\n```", text)
        return ROLE.sub(link, text)


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
