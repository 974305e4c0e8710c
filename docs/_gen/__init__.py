"""Generators of the docs' figures and model pages, made from the real models.

Imported by the MkDocs hook (``docs/hooks/site.py``) as the top-level package
``_gen``: ``figures.GENERATORS`` expands ``<!-- gen: NAME args -->`` lines and
``model_pages.model_pages()`` writes ``models/*.md``.
"""
