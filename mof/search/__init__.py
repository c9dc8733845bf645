"""Search a video collection by text: index it at U frames, query it, serve it on a web page.

:func:`mof.search.build.build_index` (``mof-cli index``) encodes shards into an index
directory (:mod:`mof.search.store` describes its files), :func:`mof.search.query.search`
(``mof-cli search``) ranks its videos for a text query, exactly or through a FAISS inverted file
(:mod:`mof.search.ann`), and :func:`mof.search.server.serve_index` (``mof-cli serve``) answers
queries from a local web page.
"""
