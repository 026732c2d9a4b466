"""Flask app factory that starts beatleader's beat in the web app's own process.

Run it with several workers; each is a contender and one of them sends the periodic tasks::

    gunicorn -c examples/gunicorn.conf.py 'examples.flask_app:create_app()'

``GET /beat`` answers this process's ``EmbeddedBeat.status()`` (running, leader, pid...), and
``/beatleader/`` is the read-only web dashboard (``beatleader.web``, docs/web.md), mounted with
werkzeug's ``DispatcherMiddleware``; its ZooKeeper client is made on its first request, in the
worker, never before gunicorn forks.

Under gunicorn the beat is started by ``post_fork`` in ``examples/gunicorn.conf.py``, in each
worker; the ``start()`` below then finds it running and returns it. Run alone (``flask --app
'examples.flask_app:create_app()' run``), the factory's ``start()`` is the one that starts it.
``flask run --debug`` calls the factory in its reloader's watcher process too, which would then
contend without serving: guard the start with ``os.environ.get("WERKZEUG_RUN_MAIN") == "true"``
if you use it.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from beatleader import EmbeddedBeat
from beatleader.web import make_dashboard
from examples.plain.proj import app as celery_app


def create_app() -> Flask:
    app = Flask(__name__)
    beat = EmbeddedBeat(celery_app).start()
    app.extensions["beatleader"] = beat

    @app.get("/beat")
    def beat_status() -> Response:
        return jsonify(beat.status())

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/beatleader": make_dashboard(celery_app)}
    )
    return app
