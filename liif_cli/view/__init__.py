"""`liif view`: a local web page to look at images at any zoom, the visible part rendered by
the model at the screen's resolution.

`session.ViewSession` holds the images and models and makes tiles and export jobs;
`server.ViewServer` serves it over HTTP on 127.0.0.1 with a token; `static/` is the page
(HTML, JS and CSS shipped in the package: nothing is fetched from elsewhere).
"""
