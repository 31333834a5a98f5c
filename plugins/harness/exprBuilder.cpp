#include "exprBuilder.h"
#include <stdexcept>

namespace harness
{
using nvinfer1::DimensionOperation;
using nvinfer1::IDimensionExpr;

Expr::Expr(int64_t constant)
    : mKind(Kind::kCONSTANT)
    , mValue(constant)
    , mImplObject(*this)
{
    mImpl = &mImplObject;
}

Expr::Expr(std::string symbol)
    : mKind(Kind::kSYMBOL)
    , mSymbol(std::move(symbol))
    , mImplObject(*this)
{
    mImpl = &mImplObject;
}

Expr::Expr(DimensionOperation op, Expr const& first, Expr const& second)
    : mKind(Kind::kOPERATION)
    , mOp(op)
    , mFirst(&first)
    , mSecond(&second)
    , mImplObject(*this)
{
    mImpl = &mImplObject;
}

int64_t applyOperation(DimensionOperation op, int64_t a, int64_t b)
{
    switch (op)
    {
    case DimensionOperation::kSUM: return a + b;
    case DimensionOperation::kPROD: return a * b;
    case DimensionOperation::kMAX: return a > b ? a : b;
    case DimensionOperation::kMIN: return a < b ? a : b;
    case DimensionOperation::kSUB: return a - b;
    case DimensionOperation::kEQUAL: return a == b ? 1 : 0;
    case DimensionOperation::kLESS: return a < b ? 1 : 0;
    case DimensionOperation::kFLOOR_DIV:
    {
        int64_t q = a / b;
        return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
    }
    case DimensionOperation::kCEIL_DIV: return -applyOperation(DimensionOperation::kFLOOR_DIV, -a, b);
    }
    throw std::runtime_error("unknown DimensionOperation");
}

int64_t Expr::evaluate(Env const& env) const
{
    switch (mKind)
    {
    case Kind::kCONSTANT: return mValue;
    case Kind::kSYMBOL:
    {
        auto const it = env.find(mSymbol);
        if (it == env.end())
        {
            throw std::runtime_error("unbound symbol " + mSymbol);
        }
        return it->second;
    }
    case Kind::kOPERATION: return applyOperation(mOp, mFirst->evaluate(env), mSecond->evaluate(env));
    }
    throw std::runtime_error("bad expression");
}

ExprBuilder::ExprBuilder()
    : mImplObject(*this)
{
    mImpl = &mImplObject;
}

Expr const* ExprBuilder::keep(std::unique_ptr<Expr> e)
{
    mExprs.push_back(std::move(e));
    return mExprs.back().get();
}

Expr const* ExprBuilder::makeConstant(int64_t value)
{
    return keep(std::make_unique<Expr>(value));
}

Expr const* ExprBuilder::makeSymbol(std::string const& name)
{
    return keep(std::make_unique<Expr>(name));
}

Expr const& ExprBuilder::unwrap(IDimensionExpr const& e)
{
    auto const* expr = dynamic_cast<Expr const*>(&e);
    if (expr == nullptr)
    {
        throw std::runtime_error("dimension expression not made by this builder");
    }
    return *expr;
}

IDimensionExpr const* ExprBuilder::Impl::constant(int64_t value)
{
    return mOwner.makeConstant(value);
}

IDimensionExpr const* ExprBuilder::Impl::operation(
    DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second)
{
    Expr const& a = unwrap(first);
    Expr const& b = unwrap(second);
    if (a.constant() && b.constant())
    {
        return mOwner.makeConstant(applyOperation(op, a.value(), b.value()));
    }
    return mOwner.keep(std::make_unique<Expr>(op, a, b));
}

IDimensionExpr const* ExprBuilder::Impl::declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&)
{
    return nullptr; // no plugin of the library has data-dependent output shapes
}

} // namespace harness
