# The serving container: SageMaker's contract (GET /ping, POST /invocations on port 8080, the model in
# /opt/ml/model). SageMaker starts it as `docker run <image> serve`; locally:
#   docker build -t postmodern --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   docker run -p 8080:8080 -v "$PWD/data/registry/<version>:/opt/ml/model:ro" postmodern serve
FROM python:3.11-slim

# constraints.txt pins the CPU build of torch (2.13.0+cpu): pass PyTorch's CPU wheel index here.
# SageMaker replaces the container to change the model: nothing to watch in /opt/ml/model. One server process
# per CPU of the instance (SERVING_WORKERS overrides), each with its own copy of the model.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PYTHONUNBUFFERED=1 \
    SERVING_RELOAD_SECONDS=0

WORKDIR /opt/program
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt . \
 && printf '#!/bin/sh\nexec postmodern serve --host 0.0.0.0 --port 8080 --model /opt/ml/model --workers "${SERVING_WORKERS:-$(nproc)}"\n' > /usr/local/bin/serve \
 && chmod +x /usr/local/bin/serve

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2)"
ENTRYPOINT []
CMD ["serve"]
