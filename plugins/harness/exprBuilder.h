// A minimal IExprBuilder / IDimensionExpr of our own, so that getOutputShapes runs without TensorRT. Expressions
// are trees over constants and named symbols (the dynamic extents, such as b and l); operations on two constants
// fold to a constant, as TensorRT's builder does, so a plugin's static extents must come back constant.
#pragma once
#include "NvInferRuntime.h"
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace harness
{

using Env = std::map<std::string, int64_t>;

class Expr final : public nvinfer1::IDimensionExpr
{
public:
    explicit Expr(int64_t constant);
    explicit Expr(std::string symbol);
    Expr(nvinfer1::DimensionOperation op, Expr const& first, Expr const& second);
    ~Expr() override = default;

    //! Value under `env` (every symbol must be bound); throws std::runtime_error otherwise.
    int64_t evaluate(Env const& env) const;
    bool constant() const
    {
        return mKind == Kind::kCONSTANT;
    }
    int64_t value() const
    {
        return mValue;
    }

private:
    class Impl final : public nvinfer1::apiv::VDimensionExpr
    {
    public:
        explicit Impl(Expr const& owner)
            : mOwner(owner)
        {
        }
        bool isConstant() const override
        {
            return mOwner.constant();
        }
        int64_t getConstantValue() const override
        {
            return mOwner.constant() ? mOwner.mValue : -1;
        }
        bool isSizeTensor() const override
        {
            return false;
        }

    private:
        Expr const& mOwner;
    };

    enum class Kind
    {
        kCONSTANT,
        kSYMBOL,
        kOPERATION
    };
    Kind mKind;
    int64_t mValue{0};
    std::string mSymbol;
    nvinfer1::DimensionOperation mOp{};
    Expr const* mFirst{nullptr};
    Expr const* mSecond{nullptr};
    Impl mImplObject;
};

//! Applies `op` as TensorRT defines it.
int64_t applyOperation(nvinfer1::DimensionOperation op, int64_t a, int64_t b);

class ExprBuilder final : public nvinfer1::IExprBuilder
{
public:
    ExprBuilder();
    ~ExprBuilder() override = default;

    Expr const* makeConstant(int64_t value);
    Expr const* makeSymbol(std::string const& name);

    //! The Expr behind an IDimensionExpr that this builder made (throws for a foreign one).
    static Expr const& unwrap(nvinfer1::IDimensionExpr const& e);

private:
    class Impl final : public nvinfer1::apiv::VExprBuilder
    {
    public:
        explicit Impl(ExprBuilder& owner)
            : mOwner(owner)
        {
        }
        nvinfer1::IDimensionExpr const* constant(int64_t value) override;
        nvinfer1::IDimensionExpr const* operation(nvinfer1::DimensionOperation op,
            nvinfer1::IDimensionExpr const& first, nvinfer1::IDimensionExpr const& second) override;
        nvinfer1::IDimensionExpr const* declareSizeTensor(
            int32_t outputIndex, nvinfer1::IDimensionExpr const& opt, nvinfer1::IDimensionExpr const& upper) override;

    private:
        ExprBuilder& mOwner;
    };

    Expr const* keep(std::unique_ptr<Expr> e);

    std::vector<std::unique_ptr<Expr>> mExprs;
    Impl mImplObject;
};

} // namespace harness
