"""Notebook logging: library lines as plain output (not red stderr), once each."""

from __future__ import annotations

import io
import logging

from cifake_lib.core.logs import show_logs


def test_show_logs_prints_library_lines_once_to_the_stream(capsys):
    out = io.StringIO()
    show_logs(stream=out)
    logger = show_logs(stream=out)  # the setup cell run twice
    try:
        logging.getLogger("cifake_lib.data.load").warning("a sample, or an incomplete copy?")
        logging.getLogger("cifake_lib.methods.cnn").info("cnn epoch 1/2: loss 0.6931")
        logging.getLogger("cifake_lib.methods.cnn").debug("not shown")
        assert out.getvalue() == "a sample, or an incomplete copy?\ncnn epoch 1/2: loss 0.6931\n"
        assert capsys.readouterr().err == ""
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.propagate, logger.level = True, logging.NOTSET
