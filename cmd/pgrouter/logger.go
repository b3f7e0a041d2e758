package main

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgrouter/pgrouter/configs"
)

func newLogger(c configs.Log) (*zap.Logger, zap.AtomicLevel, error) {
	level := zap.NewAtomicLevel()
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, level, err
	}
	zc := zap.NewProductionConfig()
	zc.Level = level
	zc.Sampling = nil
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	if c.Format != "json" {
		zc.Encoding = "console"
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	log, err := zc.Build()
	return log, level, err
}
