"""`maskrcnn serve`: the model behind an HTTP server (FastAPI + uvicorn, `pip install maskrcnn[serve]`).

    command.py   the `serve` command: options, loading the model, listening
    app.py       the FastAPI application: /v1/predict, /v1/health, /v1/model and the page at /
    batching.py  MicroBatcher: concurrent requests run together on the model's device
    uploads.py   upload limits (body bytes, image pixels) and decoding an upload into a (3, H, W) tensor
    guards.py    body timeout (408), the bytes uploads in flight may hold (503), quiet disconnects,
                 the API key (401)
    static/      the web page (plain HTML/JS/CSS, no build step): pick or drop an image, see its masks

Nothing here is imported by `import maskrcnn`; FastAPI is imported only when a server is built.
"""
