# The serving container: SageMaker's contract (GET /ping, POST /invocations on port 8080, the model in
# /opt/ml/model). SageMaker starts it as `docker run <image> serve`.
FROM python:3.11-slim

# constraints.txt pins the CPU build of torch (2.13.0+cpu): pass PyTorch's CPU wheel index here.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}

WORKDIR /opt/program
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt . \
 && printf '#!/bin/sh\nexec postmodern serve --host 0.0.0.0 --port 8080 --model /opt/ml/model\n' > /usr/local/bin/serve \
 && chmod +x /usr/local/bin/serve

EXPOSE 8080
ENTRYPOINT []
CMD ["serve"]
